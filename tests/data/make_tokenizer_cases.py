#!/usr/bin/env python3
"""Makes extra tokenizer test cases with Hugging Face `tokenizers` (pip install tokenizers).

Writes gpt2_extra_cases.jsonl and bert_extra_cases.jsonl next to this script: {"text", "ids"}
per line, from random samples of the corpora, random mixed-script strings, and edge cases
of the kinds in ../shared/data (contractions, whitespace runs, digits, punctuation, accents,
CJK, emoji, long words). Used as reference data by tests/host/test_tokenizers.cpp; the
tokenizers are the standard files in ../shared/data (a fixed seed makes the output stable).
"""
import json, os, random, sys
from tokenizers import ByteLevelBPETokenizer, BertWordPieceTokenizer

here = os.path.dirname(os.path.abspath(__file__))
shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "..", "shared", "data")
rng = random.Random(20261127)

gpt2 = ByteLevelBPETokenizer(os.path.join(shared, "gpt2/encoder.json"), os.path.join(shared, "gpt2/vocab.bpe"))
bert = BertWordPieceTokenizer(os.path.join(shared, "bert-base-uncased/vocab.txt"), lowercase=True)

lines = []
for corpus in ["kjv/kjv.txt", "web/web.txt", "devils_dictionary/devils_dictionary.txt", "jargon_file/jargon_file.txt"]:
    with open(os.path.join(shared, "corpora", corpus), encoding="utf-8") as f:
        all_lines = f.read().split("\n")[:-1]
    lines += rng.sample(all_lines, 40)

alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + list(" \t\n  .,;:!?'\"-()[]{}<>/\\@#$%^&*_+=|~`")
            + list("éèêëàâäôöûüçñÉÀÖÜßøåæœ") + list("αβγδΩπЖжЯяשלוםمرحبا") + list("日本語中文字한국어ひらがなカタカナ")
            + list("😀🎉👍🏽❤️🇫🇷") + ["\u00a0", "\u2003", "\u3000", "e\u0301", "\u00bd", "\u2460", "’", "“", "”", "—", "…"])
rand = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(150)]
edge = ["it's", "IT'S", "y'all'd've", "she'll  be", "  leading", "trailing   ", "a\n\nb", "tab\tsep", "x\r\ny",
        "1234567890123", "3.14159, 2.71828", "!!!???...", ",,,,", "https://example.org/a?b=c&d=e#f",
        '{"key": [1, 2, 3]}', "<p class=\"x\">Hi</p>", "Ünïcödé façade", "naïve café", "Ωμέγα", "Привет мир",
        "中文分词测试", "日本語のテキスト", "한국어 텍스트", "supercalifragilisticexpialidocious" * 3,
        "a" * 120, "unaffable", "UNAFFABLE", "don't stop", "x" * 99 + "é", "[SEP] raw [PAD] tokens",
        "emoji 👩‍👩‍👧‍👦 family", "flags 🇯🇵🇺🇸", "Tom’s “quoted” — dash…"]
cases = edge + lines + rand

def write(name, tok):
    with open(os.path.join(here, name), "w", encoding="utf-8") as f:
        for text in cases:
            f.write(json.dumps({"text": text, "ids": tok.encode(text, add_special_tokens=False).ids}, ensure_ascii=False) + "\n")

write("gpt2_extra_cases.jsonl", gpt2)
write("bert_extra_cases.jsonl", bert)
print(len(cases), "cases each")
