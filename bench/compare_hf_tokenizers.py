#!/usr/bin/env python3
"""Encode throughput of Hugging Face `tokenizers` on one core, on the same lines as
bench/bench_tokenizers.cpp (pip install tokenizers). Prints MB/s per tokenizer and corpus.

  RAYON_NUM_THREADS=1 python3 bench/compare_hf_tokenizers.py
"""
import os
os.environ.setdefault("RAYON_NUM_THREADS", "1")      # one core, like the C++ benchmark
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import time
from tokenizers import ByteLevelBPETokenizer, BertWordPieceTokenizer

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
corpora = {"kjv": os.path.join(repo, "data/kjv/kjv.train.txt"),
           "web": os.path.join(repo, "../shared/data/corpora/web/web.txt")}

def gpt2():
    return ByteLevelBPETokenizer(os.path.join(repo, "data/gpt2/encoder.json"), os.path.join(repo, "data/gpt2/vocab.bpe"))

def bert():
    return BertWordPieceTokenizer(os.path.join(repo, "data/bert-base-uncased/vocab.txt"), lowercase=True)

for name, make in [("gpt2", gpt2), ("wordpiece", bert)]:
    for corpus, path in corpora.items():
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")[:-1]
        best = float("inf")
        for _ in range(3):  # a fresh tokenizer per pass: caches start empty, as in the C++ benchmark
            tok = make()
            t0 = time.perf_counter()
            enc = tok.encode_batch(lines, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        tokens = sum(len(e.ids) for e in enc)
        print(f"hf_tokenizers {name:9s} {corpus}: {len(text.encode()) / best / 1e6:7.2f} MB/s  ({tokens} tokens, {best*1e3:.0f} ms)")
