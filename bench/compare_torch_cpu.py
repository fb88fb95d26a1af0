#!/usr/bin/env python3
"""Side-by-side CPU benchmark: mdlm's Host backend against PyTorch eager, same CPU, same threads.

The script builds the MDLM DiT of DESIGN.md §1 in plain PyTorch (nn.Linear, F.layer_norm,
F.scaled_dot_product_attention, torch.optim.AdamW; parameter names as the official MDLM
checkpoints, prefix `backbone.`), checks it against a golden fixture (the same fixture
`mdlm check-fixture` is held to), and times four workloads on both:

  1. main-job model (hidden 128, 4 blocks, 4 heads, cond 64, dropout 0.1, V = 260 bytes,
     B = 16, L = 128, fp32): full training step (forward + backward + clip 1.0 + AdamW 2e-3
     + EMA) from fresh weights, tokens/s;
  2. the same from a checkpoint trained for 600 steps (trained weights: denormals, sharper
     attention), tokens/s; 2b: torch again with torch.set_flush_denormal(True);
  3. `tiny` preset (8 blocks x 512, 8 heads, V = 50258, B = 2, L = 128): forward + SUBS loss
     + backward, seconds/step; mdlm with the head on the masked rows (/1) and on every row
     (/0), torch with the full head (and the trimmed head too, as a user could write it);
  4. sampling: the trained model, 4 sequences x 128 tokens, 128 steps of uncached ancestral
     sampling + final argmax, wall seconds.

PyTorch is an optional comparison, never a dependency of mdlm. Install it in a throwaway venv:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy safetensors

Run from the repository root (the mdlm binaries from a Release build with -DMDLM_CUDA=OFF or ON):

    /tmp/torchvenv/bin/python bench/compare_torch_cpu.py [--runs 5] [--quick] [--json-out FILE] \
        [--mdlm build/examples/mdlm] [--bench-bin build/bench/mdlm_bench_train_step_host]

Every measurement runs in a fresh process (mdlm's program, or this script as a torch worker),
mdlm and torch alternating, all on --threads threads (default 2: torch.set_num_threads, and
OMP_NUM_THREADS / MDLM_NUM_THREADS / --threads for mdlm). The cores are often shared: before each
measurement the script waits (--quiet-wait) until other processes leave them idle (--max-busy),
and measures again (--retries) when others used them meanwhile; the JSON records their share.
The table gives medians over the runs and the ratio mdlm throughput / torch throughput (> 1:
mdlm is faster).
"""
import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from safetensors import safe_open
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover - the message is the point
    sys.stderr.write(
        f"compare_torch_cpu.py needs PyTorch, numpy and safetensors ({e}).\n"
        "They are an optional comparison, not an mdlm dependency. Install them in a venv:\n"
        "    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy safetensors\n"
        "and run this script with /tmp/torchvenv/bin/python.\n")
    sys.exit(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS_T = 1e-3  # log-linear schedule: 1 - alpha_t = (1 - eps) t, t in [eps, 1)

# ---------------------------------------------------------------------------------------------
# The MDLM DiT (DESIGN §1) as a PyTorch user would write it.
# ---------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):
    """LayerNorm with a scale and no bias, computed in (at least) fp32."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        return F.layer_norm(x.to(dt), (x.shape[-1],), self.weight.to(dt), None, self.eps)


class EmbeddingLayer(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab, dim))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.embedding, -bound, bound)

    def forward(self, ids):
        return self.embedding[ids]


def timestep_embedding(sigma, dim=256, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    args = sigma.to(torch.float64)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma):
        return self.mlp(timestep_embedding(sigma, self.freq_dim).to(self.mlp[0].weight.dtype))


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_tables(seq_len, head_dim, base, dtype):
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv_freq[None]
    ang = torch.cat([ang, ang], dim=-1)  # (L, D): pairs (i, i + D/2)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class DDiTBlock(nn.Module):
    def __init__(self, dim, heads, cond_dim, mlp_ratio=4, dropout=0.1, eps=1e-5):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = LayerNorm(dim, eps)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim, eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c, cos, sin):
        B, L, d = x.shape
        H = self.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        h = modulate(self.norm1(x), shift1, scale1).to(x.dtype)
        qkv = self.attn_qkv(h).view(B, L, 3, H, d // H)  # [Q | K | V], each head-major
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        a = F.scaled_dot_product_attention(q, k, v)  # bidirectional, scale 1/sqrt(D)
        a = self.attn_out(a.transpose(1, 2).reshape(B, L, d))
        x = x + gate1 * F.dropout(a, self.dropout, self.training)
        h = modulate(self.norm2(x), shift2, scale2).to(x.dtype)
        x = x + gate2 * F.dropout(self.mlp(h), self.dropout, self.training)
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim, vocab, cond_dim, eps=1e-5):
        super().__init__()
        self.norm_final = LayerNorm(dim, eps)
        self.linear = nn.Linear(dim, vocab)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)
        for p in (self.linear.weight, self.linear.bias, self.adaLN_modulation.weight, self.adaLN_modulation.bias):
            nn.init.zeros_(p)


class DIT(nn.Module):
    def __init__(self, vocab, hidden, heads, blocks, cond_dim, mlp_ratio=4, dropout=0.1, eps=1e-5,
                 rope_base=10000.0, time_conditioning=False, freq_dim=256):
        super().__init__()
        self.time_conditioning, self.rope_base, self.hidden, self.heads = time_conditioning, rope_base, hidden, heads
        self.vocab_embed = EmbeddingLayer(vocab, hidden)
        self.sigma_map = TimestepEmbedder(cond_dim, freq_dim)
        self.blocks = nn.ModuleList(DDiTBlock(hidden, heads, cond_dim, mlp_ratio, dropout, eps) for _ in range(blocks))
        self.output_layer = FinalLayer(hidden, vocab, cond_dim, eps)
        self._rope = {}

    def hidden_states(self, ids, sigma):
        """Everything before the output head: the final adaLN-modulated LayerNorm (B, L, d)."""
        B, L = ids.shape
        x = self.vocab_embed(ids)
        if not self.time_conditioning:
            sigma = torch.zeros_like(sigma)
        c = F.silu(self.sigma_map(sigma))
        key = (L, x.dtype)
        if key not in self._rope:
            self._rope[key] = rope_tables(L, self.hidden // self.heads, self.rope_base, x.dtype)
        cos, sin = self._rope[key]
        for blk in self.blocks:
            x = blk(x, c, cos, sin)
        shift, scale = self.output_layer.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return modulate(self.output_layer.norm_final(x), shift, scale).to(x.dtype)

    def head(self, h):
        return self.output_layer.linear(h)

    def forward(self, ids, sigma):
        return self.head(self.hidden_states(ids, sigma))


class MDLM(nn.Module):
    """The wrapper whose state_dict names are `backbone.<official name>`."""

    def __init__(self, **cfg):
        super().__init__()
        self.backbone = DIT(**cfg)


def model_from_config(cfg, dropout=None):
    """A torch MDLM from an mdlm/golden JSON config (vocab_size, hidden, n_heads, ...)."""
    return MDLM(vocab=cfg["vocab_size"], hidden=cfg["hidden"], heads=cfg["n_heads"], blocks=cfg["n_blocks"],
                cond_dim=cfg["cond_dim"], mlp_ratio=cfg.get("mlp_ratio", 4),
                dropout=cfg.get("dropout", 0.0) if dropout is None else dropout,
                eps=cfg.get("layer_norm_eps", 1e-5), rope_base=float(cfg.get("rope_base", 10000.0)),
                time_conditioning=bool(cfg.get("time_conditioning", False)), freq_dim=cfg.get("freq_dim", 256))


# ---------------------------------------------------------------------------------------------
# The SUBS NELBO (log-linear schedule)
# ---------------------------------------------------------------------------------------------


def loglinear_sigma(t):
    return -torch.log1p(-(1 - EPS_T) * t)


def subs_loss_at(model, x0, zt, t, loss_mask, mask_id, trim_head=False):
    """Continuous-time NELBO for given t (B) and z_t: at masked positions -log p(x0) / t with the
    mask logit shifted by -1e6; zero elsewhere (SUBS carry-over); mean over the loss mask."""
    bb = model.backbone
    masked = (zt == mask_id) & (loss_mask != 0)
    weight = (1.0 / t).to(torch.float64)[:, None].expand_as(zt)  # sigma'/expm1(sigma) = 1/t exactly
    sigma = loglinear_sigma(t)
    if trim_head:  # the output head on the rows that carry loss only
        h = bb.hidden_states(zt, sigma)[masked]
        logits = bb.head(h)
        target, w, lm = x0[masked], weight[masked], loss_mask[masked]
    else:
        logits = bb(zt, sigma)
        target, w, lm = x0, weight * masked, loss_mask
    shift = torch.zeros(logits.shape[-1], dtype=logits.dtype)
    shift[mask_id] = -1e6
    logp = torch.log_softmax((logits + shift).float() if logits.dtype != torch.float64 else logits + shift, dim=-1)
    nll = -logp.gather(-1, target[..., None]).squeeze(-1)
    return (nll * (w * lm).to(nll.dtype)).sum() / loss_mask.sum().to(nll.dtype)


def subs_loss(model, x0, mask_id, gen, trim_head=False):
    """One MDLM training loss: stratified t per sequence, absorbing mask, SUBS NELBO."""
    B, L = x0.shape
    r = torch.rand((), generator=gen, dtype=torch.float64)
    u = torch.remainder(r + torch.arange(B, dtype=torch.float64) / B, 1.0)
    t = (1 - EPS_T) * u + EPS_T
    move = (1 - EPS_T) * t
    masked = torch.rand(B, L, generator=gen, dtype=torch.float64) < move[:, None]
    zt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return subs_loss_at(model, x0, zt, t, torch.ones(B, L), mask_id, trim_head)


# ---------------------------------------------------------------------------------------------
# Data: mdlm's token shards (64-byte header) in the "wrap" style: [BOS] chunk of L-2 [EOS]
# ---------------------------------------------------------------------------------------------


class WrapBatches:
    def __init__(self, data_dir, seq_len, seed=0):
        meta = json.load(open(os.path.join(data_dir, "meta.json")))
        raw = open(os.path.join(data_dir, "train.bin"), "rb").read()
        assert raw[:8] == b"MDLMTOKS", "not an mdlm token shard"
        width = int.from_bytes(raw[12:16], "little")
        count = int.from_bytes(raw[16:24], "little")
        dtype = {2: np.uint16, 4: np.uint32}[width]
        self.tokens = torch.from_numpy(np.frombuffer(raw, dtype=dtype, count=count, offset=64).astype(np.int64))
        self.bos, self.eos, self.mask, self.vocab = meta["bos"], meta["eos"], meta["mask"], meta["vocab_size"]
        self.L = seq_len
        self.count = count // (seq_len - 2)
        self.gen = torch.Generator().manual_seed(seed)

    def next(self, batch):
        k = torch.randint(self.count, (batch,), generator=self.gen)
        idx = k[:, None] * (self.L - 2) + torch.arange(self.L - 2)[None]
        body = self.tokens[idx]
        return torch.cat([torch.full((batch, 1), self.bos), body, torch.full((batch, 1), self.eos)], dim=1)


# ---------------------------------------------------------------------------------------------
# Torch workers (each runs in its own process: python compare_torch_cpu.py --worker KIND ARGS)
# ---------------------------------------------------------------------------------------------


def set_threads(n):
    torch.set_num_threads(n)


def main_job_model(vocab, dropout=0.1):
    return MDLM(vocab=vocab, hidden=128, heads=4, blocks=4, cond_dim=64, dropout=dropout)


def load_checkpoint_into(model, path, prefix="backbone."):
    """Loads the tensors `prefix<name>` of an mdlm checkpoint as `backbone.<name>` (strict)."""
    tensors = load_file(path)
    sd = {"backbone." + k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    model.load_state_dict(sd, strict=True)
    return tensors


def train_steps(model, data, batch, steps, warmup_steps, lr_peak=2e-3, lr_warmup=50, start_step=0, opt_state=None,
                ema_tensors=None, flush_denormal=False):
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    opt = torch.optim.AdamW(params, lr=lr_peak, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if opt_state is not None:  # AdamW moments and step count from the mdlm checkpoint
        for n, p in zip(names, params):
            opt.state[p] = {"step": torch.tensor(float(start_step)),
                            "exp_avg": opt_state["optimizer.exp_avg." + n].clone(),
                            "exp_avg_sq": opt_state["optimizer.exp_avg_sq." + n].clone()}
    ema = [ema_tensors["ema." + n].clone() for n in names] if ema_tensors is not None else [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(1234)
    model.train()
    times, losses = [], []
    step = start_step
    if flush_denormal:
        torch.set_flush_denormal(True)
    for i in range(warmup_steps + steps):
        step += 1
        t0 = time.perf_counter()  # the whole step, batch included (mdlm's tokens/s is wall time too)
        x0 = data.next(batch)
        for g in opt.param_groups:
            g["lr"] = lr_peak * min(1.0, step / lr_warmup) if lr_warmup > 0 else lr_peak
        opt.zero_grad(set_to_none=True)
        loss = subs_loss(model, x0, data.mask, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(0.9999, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        losses.append(loss.item())
        if i >= warmup_steps:
            times.append(time.perf_counter() - t0)
    torch.set_flush_denormal(False)
    return times, losses


def worker_train(a):
    data = WrapBatches(a["data"], 128, seed=a.get("seed", 0))
    torch.manual_seed(a.get("seed", 0))
    model = main_job_model(data.vocab)
    out = {}
    if a.get("checkpoint"):
        tensors = load_checkpoint_into(model, a["checkpoint"])
        meta = safe_open(a["checkpoint"], "pt").metadata()
        start = json.loads(meta["training_state"])["step"]
        variants = [("default", False)] + ([("flush_denormal", True)] if a.get("also_ftz") else [])
        for name, ftz in variants:
            load_checkpoint_into(model, a["checkpoint"])
            times, losses = train_steps(model, data, 16, a["steps"], 3, start_step=start, opt_state=tensors,
                                        ema_tensors=tensors, flush_denormal=ftz)
            out[name] = {"tokens_per_s": 16 * 128 * len(times) / sum(times), "loss": statistics.mean(losses)}
    else:
        times, losses = train_steps(model, data, 16, a["steps"], 3)
        out["default"] = {"tokens_per_s": 16 * 128 * len(times) / sum(times), "loss": statistics.mean(losses)}
    return out


def worker_tiny(a):
    torch.manual_seed(0)
    V = 50258
    model = MDLM(vocab=V, hidden=512, heads=8, blocks=8, cond_dim=128, dropout=0.1)
    with torch.no_grad():  # like mdlm's benchmark: DESIGN init plus a little noise, so adaLN and head work
        for p in model.parameters():
            p.add_(0.02 * (torch.rand_like(p) - 0.5))
    model.train()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randint(V - 1, (2, 128), generator=gen)
    out = {}
    for trim in (False, True):
        for i in range(1 + a["steps"]):
            if i == 1:
                t0 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            subs_loss(model, x0, V - 1, gen, trim_head=trim).backward()
        out["trimmed" if trim else "full"] = (time.perf_counter() - t0) / a["steps"]
    return out


@torch.inference_mode()
def worker_sample(a):
    model = main_job_model(260, dropout=0.0)
    meta = json.loads(safe_open(a["checkpoint"], "pt").metadata()["training_state"])
    load_checkpoint_into(model, a["checkpoint"], prefix="ema.backbone.")  # sampling uses the EMA weights
    model.eval()
    mask_id = meta["mask_id"]
    data_meta = json.load(open(os.path.join(a["data"], "meta.json")))
    n, L, steps, t_min = a["num_samples"], a["length"], a["steps"], 1e-5
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    z = torch.full((n, L), mask_id, dtype=torch.long)
    z[:, 0] = data_meta["bos"]  # the BOS "prompt" mdlm sample puts first
    sigma0 = torch.zeros(n)
    nfe = 0
    for i in range(steps):  # ancestral t -> s on the grid 1 .. t_min (the official _ddpm_update)
        t = 1.0 - (1.0 - t_min) * i / steps
        s = 1.0 - (1.0 - t_min) * (i + 1) / steps
        move_t, move_s = (1 - EPS_T) * t, (1 - EPS_T) * s
        is_mask = z == mask_id
        if not is_mask.any():
            continue
        logits = model.backbone(z, sigma0)
        nfe += 1
        logits[..., mask_id] = -float("inf")  # SUBS: the mask is never predicted
        p = torch.softmax(logits.double(), dim=-1)
        q = p * (move_t - move_s)
        q[..., mask_id] = move_s  # stay masked w.p. move_s / move_t
        e = -torch.log(torch.rand(q.shape, generator=gen, dtype=torch.float64))
        draw = (q / e).argmax(dim=-1)  # exponential race: an exact categorical draw
        z = torch.where(is_mask, draw, z)
    if (z == mask_id).any():  # noise removal: argmax at t_min
        logits = model.backbone(z, sigma0)
        nfe += 1
        logits[..., mask_id] = -float("inf")
        z = torch.where(z == mask_id, logits.argmax(-1), z)
    return {"seconds": time.perf_counter() - t0, "nfe": nfe,
            "text0": bytes(int(v) for v in z[0].tolist() if v < 256).decode("utf-8", "replace")[:80]}


@torch.inference_mode()
def worker_eval(a):
    """Torch's NELBO of the trained checkpoint (EMA weights) on validation batches: a sanity check
    that the mdlm checkpoint loaded into torch is the model mdlm trained."""
    model = main_job_model(260, dropout=0.0)
    load_checkpoint_into(model, a["checkpoint"], prefix="ema.backbone.")
    model.eval()
    data = WrapBatches(a["data"], 128, seed=7)
    raw = open(os.path.join(a["data"], "valid.bin"), "rb").read()
    count = int.from_bytes(raw[16:24], "little")
    data.tokens = torch.from_numpy(np.frombuffer(raw, dtype=np.uint16, count=count, offset=64).astype(np.int64))
    data.count = count // 126
    gen = torch.Generator().manual_seed(7)
    vals = [subs_loss(model, data.next(16), data.mask, gen).item() for _ in range(a["batches"])]
    return {"nats_per_token": statistics.mean(vals), "batches": a["batches"]}


def rel_err(a, ref):
    return (a.double() - ref.double()).abs().max().item() / max(ref.double().abs().max().item(), 1e-300)


def worker_fixture(a):
    """Loads a golden fixture's parameters into the torch model; logits, loss and gradients vs
    the fixture's (max |a - ref| / max |ref|), in fp32 and fp64."""
    f = a["fixture"]
    with safe_open(f, "pt") as s:
        cfg = json.loads(s.metadata()["config"])
    t = load_file(f)
    res = {"config": {k: cfg[k] for k in ("vocab_size", "hidden", "n_heads", "n_blocks", "time_conditioning")}}
    for dtype in (torch.float32, torch.float64):
        model = model_from_config(cfg, dropout=0.0).to(dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in t.items() if k.startswith("backbone.")}, strict=True)
        model.eval()
        zt, x0 = t["inputs.zt"], t["inputs.x0"]
        sigma = t["inputs.sigma"].to(dtype)
        logits = model.backbone(zt, sigma)
        loss = subs_loss_at(model, x0, zt, t["inputs.t"], t["inputs.loss_mask"], cfg["mask_id"])
        loss.backward()
        grads = max(rel_err(p.grad, t["grads." + n]) for n, p in model.named_parameters())
        key = "f32" if dtype == torch.float32 else "f64"
        res[key] = {"logits": rel_err(logits.detach(), t["outputs.logits"]),
                    "loss": rel_err(loss.detach().reshape(1), t["outputs.loss"]), "grads_max": grads}
    return res


WORKERS = {"train": worker_train, "tiny": worker_tiny, "sample": worker_sample, "eval": worker_eval,
           "fixture": worker_fixture}

# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_busy(interval=1.0):
    """Fraction of all cores busy (everything but idle and iowait) over `interval` seconds."""
    def snap():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def busy_snapshot():
    """(wall time, CPU seconds all processes spent on the cores, CPU seconds of our finished children)."""
    import resource
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.time(), (sum(v) - v[3] - v[4]) / hz, ch.ru_utime + ch.ru_stime


def others_busy(before, after):
    """Fraction of all cores that processes other than our measured child used between two snapshots."""
    wall = max(after[0] - before[0], 1e-3)
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / (wall * (os.cpu_count() or 1)))


def wait_quiet(max_busy, max_wait):
    """Waits (at most max_wait seconds) until the other processes leave the cores idle enough:
    the cores are shared, and a compile on one of two cores slows OpenMP loops several-fold."""
    t0 = time.time()
    b = cpu_busy()
    while b > max_busy and time.time() - t0 < max_wait:
        b = cpu_busy(2.0)
    return b


class Runner:
    def __init__(self, args):
        self.args = args
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MDLM_NUM_THREADS=str(args.threads),
                        OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        self.mdlm = args.mdlm
        probe = subprocess.run([self.mdlm, "info", "--preset", "tiny", "--vocab", "260", "--threads", str(args.threads)],
                               capture_output=True, text=True, env=self.env)
        self.thread_flag = ["--threads", str(args.threads)] if probe.returncode == 0 else []

    def run(self, cmd, **kw):
        p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, **kw)
        if p.returncode != 0:
            raise RuntimeError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return p.stdout

    def mdlm_cmd(self, *a):
        return [self.mdlm, *a, *self.thread_flag]

    def torch_worker(self, kind, **a):
        out = self.run([sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(a),
                        "--threads", str(self.args.threads)])
        return json.loads(out.strip().splitlines()[-1])


def train_flags():
    return ["--hidden", "128", "--blocks", "4", "--heads", "4", "--seq-len", "128", "--batch", "16",
            "--lr", "2e-3", "--warmup", "50"]


def mdlm_window_tps(metrics_path, skip_first=1):
    """Tokens/s over the logged training windows after the first (warm-up) one."""
    rows = [json.loads(l) for l in open(metrics_path) if l.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    keep = train[skip_first:]
    if not keep:
        raise RuntimeError(f"{metrics_path}: no training window after the first")
    steps = [keep[0]["step"] - train[skip_first - 1]["step"]] + [b["step"] - a["step"] for a, b in zip(keep, keep[1:])]
    tokens = [s * 16 * 128 for s in steps]
    return sum(tokens) / sum(tk / r["tokens_per_s"] for tk, r in zip(tokens, keep))


def ensure_trained(r, data, work, steps=600):
    d = os.path.join(work, "trained")
    ck = os.path.join(d, "checkpoint.safetensors")
    if os.path.exists(ck):
        st = json.loads(safe_open(ck, "pt").metadata()["training_state"])
        if st.get("step") == steps:
            log(f"using the cached trained checkpoint {ck} (step {steps})")
            return d
        shutil.rmtree(d)
    log(f"training the main-job model for {steps} steps once (a few minutes) -> {d}")
    t0 = time.time()
    r.run(r.mdlm_cmd("train", "--data", data, "--out", d, *train_flags(), "--steps", str(steps), "--eval-every", "200",
                     "--log-every", "50", "--save-every", "200"))
    log(f"  trained in {time.time() - t0:.0f} s")
    return d


def median(v):
    return statistics.median(v) if v else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mdlm", default=os.path.join(REPO, "build/examples/mdlm"), help="the mdlm program")
    ap.add_argument("--bench-bin", default=os.path.join(REPO, "build/bench/mdlm_bench_train_step_host"),
                    help="mdlm_bench_train_step_host")
    ap.add_argument("--work", default="/tmp/torchcmp", help="prepared data, the cached trained checkpoint, scratch")
    ap.add_argument("--runs", type=int, default=5, help="runs per workload and side (medians reported)")
    ap.add_argument("--quick", action="store_true", help="3 runs, fewer steps, no 2b row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,3,4", help="workloads to run (comma-separated: 1,2,3,4)")
    ap.add_argument("--json-out", help="write the raw numbers as JSON here")
    ap.add_argument("--max-busy", type=float, default=0.15,
                    help="before each measurement, wait until the cores are at most this busy (fraction) ...")
    ap.add_argument("--quiet-wait", type=float, default=90, help="... for at most this many seconds")
    ap.add_argument("--retries", type=int, default=2,
                    help="measure again (at most this often) when other processes used > 2 x --max-busy of the cores")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("worker_args", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # a torch measurement in its own process
        set_threads(args.threads)
        print(json.dumps(WORKERS[args.worker](json.loads(args.worker_args))))
        return

    set_threads(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the scratch directory is removed
    runs = 3 if args.quick else args.runs
    log_every, train_windows = (10, 4) if not args.quick else (5, 3)  # mdlm: windows of log_every steps
    timed_steps = log_every * (train_windows - 1)  # the steps both sides time (after warm-up)
    tiny_steps = 3 if not args.quick else 2
    rows_wanted = {int(x) for x in args.rows.split(",")}
    for path in (args.mdlm, args.bench_bin):
        if not os.path.exists(path):
            sys.exit(f"{path} not found: build it (cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && "
                     f"cmake --build build --target mdlm_cli mdlm_bench_train_step_host) or pass --mdlm / --bench-bin")
    os.makedirs(args.work, exist_ok=True)
    r = Runner(args)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    report = {"torch": torch.__version__, "cpu": cpu, "cores": os.cpu_count(), "threads": args.threads,
              "mdlm": os.path.abspath(args.mdlm), "bench_bin": os.path.abspath(args.bench_bin),
              "mdlm_thread_flag": bool(r.thread_flag), "runs": runs, "loadavg_start": os.getloadavg(), "rows": []}
    log(f"torch {torch.__version__} on {cpu}, {args.threads} threads; mdlm {args.mdlm} "
        f"({'--threads' if r.thread_flag else 'OMP_NUM_THREADS only'})")

    # -- the port: torch vs the golden fixtures (which mdlm check-fixture is held to)
    report["fixtures"] = {}
    for name in ("mdlm_tiny", "mdlm_tiny_timecond_pad"):
        f = os.path.join(REPO, "tests/fixtures", name + ".safetensors")
        tr = r.torch_worker("fixture", fixture=f)
        mr = json.loads(r.run(r.mdlm_cmd("check-fixture", f, "--dtype", "f32")))
        tr["mdlm_f32_logits"] = mr["tensors"]["outputs.logits"]["max_rel"]
        report["fixtures"][name] = tr
        log(f"fixture {name}: logits max rel. error vs the fp64 reference: torch fp32 {tr['f32']['logits']:.2e} "
            f"(fp64 {tr['f64']['logits']:.2e}), mdlm fp32 {tr['mdlm_f32_logits']:.2e}; torch fp32 loss "
            f"{tr['f32']['loss']:.2e}, gradients {tr['f32']['grads_max']:.2e}")

    data = os.path.join(args.work, "kjv-bytes")
    if not os.path.exists(os.path.join(data, "train.bin")):
        r.run(r.mdlm_cmd("prepare", "--tokenizer", "bytes", "--input", os.path.join(REPO, "data/kjv/kjv.train.txt"),
                         os.path.join(REPO, "data/kjv/kjv.valid.txt"), "--out", data))
    trained = ensure_trained(r, data, args.work) if rows_wanted & {2, 4} else None
    if trained:
        mv = [json.loads(l) for l in open(os.path.join(trained, "metrics.jsonl")) if '"valid"' in l]
        ev = r.torch_worker("eval", checkpoint=os.path.join(trained, "checkpoint.safetensors"), data=data, batches=16)
        report["trained_check"] = {"torch_nelbo": ev["nats_per_token"], "mdlm_valid_nelbo": mv[-1]["loss"] if mv else None}
        log(f"trained checkpoint in torch (EMA weights): NELBO {ev['nats_per_token']:.4f} nats/token on 16 validation "
            f"batches; mdlm's last validation {report['trained_check']['mdlm_valid_nelbo']}")

    def interleave(name, unit, mdlm_fn, torch_fn):
        res = {"name": name, "unit": unit, "mdlm": [], "torch": [], "busy": {"mdlm": [], "torch": []}}
        for i in range(runs):
            order = [("mdlm", mdlm_fn), ("torch", torch_fn)]
            for side, fn in (order if i % 2 == 0 else order[::-1]):
                for attempt in range(1 + args.retries):  # measure again when others used the cores meanwhile
                    wait_quiet(args.max_busy, args.quiet_wait)
                    b0 = busy_snapshot()
                    v = fn()
                    busy = others_busy(b0, busy_snapshot())
                    if busy <= 2 * args.max_busy or attempt == args.retries:
                        break
                    log(f"    ({side}: other processes used {busy:.0%} of the cores meanwhile; measuring again)")
                res["busy"][side].append(round(busy, 3))
                if isinstance(v, dict):
                    for k, x in v.items():
                        res.setdefault(k, []).append(x)
                else:
                    res[side].append(v)
            log(f"  {name} run {i + 1}/{runs}: mdlm {res['mdlm'][-1]:.4g}, torch {res['torch'][-1]:.4g} {unit} "
                f"(others on the cores meanwhile: {res['busy']['mdlm'][-1]:.0%}, {res['busy']['torch'][-1]:.0%})")
        return res

    rows = []
    scratch = tempfile.mkdtemp(prefix="run-", dir=args.work)
    try:
        if 1 in rows_wanted:
            log("row 1: main-job training step, fresh weights")

            def m1():
                out = os.path.join(scratch, "fresh")
                shutil.rmtree(out, ignore_errors=True)
                r.run(r.mdlm_cmd("train", "--data", data, "--out", out, *train_flags(),
                                 "--steps", str(log_every * train_windows), "--log-every", str(log_every),
                                 "--eval-every", "1000000", "--save-every", "1000000", "--eval-batches", "1"))
                return mdlm_window_tps(os.path.join(out, "metrics.jsonl"))

            def t1():
                return r.torch_worker("train", data=data, steps=timed_steps)["default"]["tokens_per_s"]

            rows.append(interleave("1. main-job train step (fresh weights), B=16 L=128", "tokens/s", m1, t1))

        if 2 in rows_wanted:
            log("row 2: main-job training step from the 600-step checkpoint")
            ck = os.path.join(trained, "checkpoint.safetensors")
            st = json.loads(safe_open(ck, "pt").metadata()["training_state"])["step"]
            also_ftz = not args.quick

            def m2():
                out = os.path.join(scratch, "resume")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                shutil.copy(ck, out)
                r.run(r.mdlm_cmd("train", "--data", data, "--out", out, *train_flags(), "--resume",
                                 "--steps", str(st + log_every * train_windows), "--log-every", str(log_every),
                                 "--eval-every", "1000000", "--save-every", "1000000", "--eval-batches", "1"))
                return mdlm_window_tps(os.path.join(out, "metrics.jsonl"))

            def t2():
                o = r.torch_worker("train", data=data, steps=timed_steps, checkpoint=ck, also_ftz=also_ftz)
                v = {"torch": o["default"]["tokens_per_s"]}
                if also_ftz:
                    v["torch_flush_denormal"] = o["flush_denormal"]["tokens_per_s"]
                return v

            res = interleave("2. main-job train step (600-step weights)", "tokens/s", m2, t2)
            rows.append(res)
            if also_ftz:
                rows.append({"name": "2b. same, torch with set_flush_denormal(True)", "unit": "tokens/s",
                             "mdlm": res["mdlm"], "torch": res.pop("torch_flush_denormal"), "busy": res["busy"],
                             "derived": True})

        if 3 in rows_wanted:
            log("row 3: tiny preset forward + backward")

            def m3():
                out = r.run([args.bench_bin, "--benchmark_filter=tiny_preset", "--benchmark_format=json"])
                bm = {b["name"]: b for b in json.loads(out)["benchmarks"]}
                get = lambda k: next(v for n, v in bm.items() if n.startswith(f"BM_train_step_tiny_preset/{k}"))
                unit = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0}
                sec = lambda b: b["real_time"] * unit[b["time_unit"]]
                return {"mdlm": sec(get(1)), "mdlm_full": sec(get(0))}

            def t3():
                o = r.torch_worker("tiny", steps=tiny_steps)
                return {"torch": o["full"], "torch_trimmed": o["trimmed"]}

            res = interleave("3a. tiny preset fwd+bwd: mdlm head on masked rows (/1) vs torch full head", "s/step", m3, t3)
            full, trimmed = res.pop("mdlm_full"), res.pop("torch_trimmed")
            rows.append(res)
            rows.append({"name": "3b. tiny preset fwd+bwd, full head on both (mdlm /0)", "unit": "s/step",
                         "mdlm": full, "torch": res["torch"], "busy": res["busy"], "derived": True})
            rows.append({"name": "3c. tiny preset fwd+bwd, head on masked rows on both", "unit": "s/step",
                         "mdlm": res["mdlm"], "torch": trimmed, "busy": res["busy"], "derived": True})

        if 4 in rows_wanted:
            log("row 4: sampling, ancestral uncached, 4 x 128 tokens, 128 steps")

            def m4():
                out = r.run(r.mdlm_cmd("sample", "--checkpoint", trained, "--sampler", "ancestral", "--steps", "128",
                                       "--length", "128", "--num-samples", "4", "--json"))
                return json.loads(out.strip().splitlines()[0])["seconds"]

            def t4():
                return r.torch_worker("sample", checkpoint=os.path.join(trained, "checkpoint.safetensors"), data=data,
                                      num_samples=4, length=128, steps=128)["seconds"]

            rows.append(interleave("4. sampling: ancestral, 4 x 128 tokens, 128 steps (trained)", "s", m4, t4))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # -- the table
    limit = 2 * args.max_busy
    for row in rows:  # medians over the clean measurements (others <= limit) when there are >= 3
        for side in ("mdlm", "torch"):
            clean = [v for v, b in zip(row[side], row["busy"][side]) if b <= limit]
            use = clean if len(clean) >= min(3, len(row[side])) else row[side]
            row[side + "_median"], row[side + "_used"] = median(use), len(use)
        higher_better = row["unit"] == "tokens/s"
        row["ratio"] = (row["mdlm_median"] / row["torch_median"]) if higher_better else (row["torch_median"] / row["mdlm_median"])
    report["rows"] = rows
    report["loadavg_end"] = os.getloadavg()
    fmt = lambda v, u: f"{v:,.0f} {u}" if u == "tokens/s" else f"{v:.3f} {u}"
    lines = ["| workload | mdlm Host | PyTorch eager | ratio (mdlm / torch throughput) | runs (mdlm / torch) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['name']} | {fmt(row['mdlm_median'], row['unit'])} | {fmt(row['torch_median'], row['unit'])} "
                     f"| {row['ratio']:.2f}× | {row['mdlm_used']} / {row['torch_used']} |")
    fx = report["fixtures"]["mdlm_tiny"]
    busy = [b for row in rows if not row.get("derived") for side in ("mdlm", "torch") for b in row["busy"][side]]
    busy = busy or [float("nan")]
    dirty = sum(b > limit for b in busy)
    lines.append("")
    lines.append(f"torch {torch.__version__}, {cpu}, {args.threads} threads, medians of {runs} runs; fixture mdlm_tiny "
                 f"logits max rel. error (fp32, vs the fp64 reference): torch {fx['f32']['logits']:.1e}, "
                 f"mdlm {fx['mdlm_f32_logits']:.1e}; load average {report['loadavg_start'][0]:.2f} -> "
                 f"{report['loadavg_end'][0]:.2f}; other processes' share of the cores during a measurement: median "
                 f"{median(busy):.0%}, max {max(busy):.0%}; {dirty} measurement(s) above {limit:.0%}, left out of a median "
                 f"where >= 3 clean ones remained")
    print("\n".join(lines))
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
