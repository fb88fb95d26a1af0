#!/usr/bin/env python3
"""Makes the `mdlm-trajectory-v1` files in tests/data/trajectories/: many optimizer steps of an
MDLM (or AR) training run in float64 PyTorch, for `mdlm check-trajectory` to replay.

Written from ../shared/DESIGN.md section 1 and the issue's format, not from mdlm's C++: the
model is plain PyTorch modules under the official MDLM parameter names, the optimizer is
torch.optim.AdamW, clipping is torch.nn.utils.clip_grad_norm_, gradient accumulation is what
Lightning does (each micro-batch loss divided by the number of micro-batches, then backward),
and the EMA is the official code's ExponentialMovingAverage. The per-sequence schedule scalars
(sigma(t) and the NELBO weights) are computed with mpmath at 50 digits, so the reference does not
inherit any cancellation of a float64 formula (cosine: 1 - alpha_t near t = 0).

PyTorch is never an mdlm dependency. Run it with a venv that has torch, numpy, safetensors:

    /tmp/torchvenv/bin/python tests/data/make_trajectories.py [--out tests/data/trajectories] [--only NAME]

Same seed, same tensors and config (checked: a rerun gives identical values; the header bytes may be ordered differently).
"""
import argparse
import json
import math
import os
import sys

import mpmath
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
mpmath.mp.dps = 50
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ------------------------------------------------------------------------------------------
# The backbone (DESIGN §1): DiT with adaLN, or the AR variant (no adaLN, no time input, causal).
# ------------------------------------------------------------------------------------------


class LayerNorm(nn.Module):  # scale only, no bias
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)


class EmbeddingLayer(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab, dim))

    def forward(self, ids):
        return self.embedding[ids]


class TimestepEmbedder(nn.Module):
    def __init__(self, cond_dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        args = sigma[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))  # cos first


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Block(nn.Module):
    def __init__(self, dim, heads, cond_dim, mlp_ratio, eps, adaln, causal):
        super().__init__()
        self.heads, self.causal, self.adaln = heads, causal, adaln
        self.norm1 = LayerNorm(dim, eps)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim, eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim))
        if adaln:
            self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)

    def attention(self, h, cos, sin):
        B, L, d = h.shape
        H = self.heads
        qkv = self.attn_qkv(h).view(B, L, 3, H, d // H)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, L, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // H)
        if self.causal:
            scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
        a = torch.softmax(scores, dim=-1) @ v
        return self.attn_out(a.transpose(1, 2).reshape(B, L, d))

    def forward(self, x, c, cos, sin):
        if not self.adaln:
            x = x + self.attention(self.norm1(x), cos, sin)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        x = x + gate1 * self.attention(self.norm1(x) * (1 + scale1) + shift1, cos, sin)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class FinalLayer(nn.Module):
    def __init__(self, dim, vocab, cond_dim, eps, adaln):
        super().__init__()
        self.adaln = adaln
        self.norm_final = LayerNorm(dim, eps)
        self.linear = nn.Linear(dim, vocab)
        if adaln:
            self.adaLN_modulation = nn.Linear(cond_dim, 2 * dim)

    def forward(self, x, c):
        h = self.norm_final(x)
        if self.adaln:
            shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
            h = h * (1 + scale) + shift
        return self.linear(h)


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        causal = cfg["causal"]
        d, eps = cfg["hidden"], cfg["layer_norm_eps"]
        self.vocab_embed = EmbeddingLayer(cfg["vocab_size"], d)
        if not causal:
            self.sigma_map = TimestepEmbedder(cfg["cond_dim"])
        self.blocks = nn.ModuleList(
            Block(d, cfg["n_heads"], cfg["cond_dim"], cfg["mlp_ratio"], eps, not causal, causal) for _ in range(cfg["n_blocks"]))
        self.output_layer = FinalLayer(d, cfg["vocab_size"], cfg["cond_dim"], eps, not causal)

    def forward(self, ids, sigma=None):
        B, L = ids.shape
        x = self.vocab_embed(ids)
        c = None
        if not self.cfg["causal"]:
            if not self.cfg["time_conditioning"]:
                sigma = torch.zeros(B)  # time-agnostic denoiser: sigma fed as 0
            c = F.silu(self.sigma_map(sigma))
        D = self.cfg["hidden"] // self.cfg["n_heads"]
        inv_freq = self.cfg["rope_base"] ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(L, dtype=torch.float64)[:, None] * inv_freq[None]
        ang = torch.cat([ang, ang], dim=-1)  # rotate-half pairs (i, i + D/2)
        cos, sin = ang.cos(), ang.sin()
        for blk in self.blocks:
            x = blk(x, c, cos, sin)
        return self.output_layer(x, c)


# ------------------------------------------------------------------------------------------
# Schedules and the objectives (DESIGN §1), scalars in mpmath.
# ------------------------------------------------------------------------------------------


def alpha_mp(schedule, eps, t):
    t = mpmath.mpf(t)
    if schedule == "loglinear":
        return 1 - (1 - mpmath.mpf(eps)) * t
    if schedule == "cosine":
        return mpmath.mpf(eps) + (1 - mpmath.mpf(eps)) * mpmath.cos(mpmath.pi * t / 2)
    raise ValueError(schedule)


def sigma_of(schedule, eps, t):  # total noise sigma(t) = -log alpha_t
    return float(-mpmath.log(alpha_mp(schedule, eps, t)))


def continuous_weight(schedule, eps, t):  # sigma'(t) / expm1(sigma(t))
    sig = lambda u: -mpmath.log(alpha_mp(schedule, eps, u))
    return float(mpmath.diff(sig, mpmath.mpf(t)) / mpmath.expm1(sig(t)))


def discrete_weight(schedule, eps, t, T):  # T (alpha_s - alpha_t) / (1 - alpha_t), s = t - 1/T
    s = mpmath.mpf(t) - mpmath.mpf(1) / T
    a_t, a_s = alpha_mp(schedule, eps, t), alpha_mp(schedule, eps, s)
    return float(T * (a_s - a_t) / (1 - a_t))


def mdlm_loss(model, cfg, x0, zt, t, loss_mask):
    """Token-mean NELBO with the SUBS parameterization."""
    mask_id = cfg["mask_id"]
    sched, eps = cfg["schedule"], cfg["eps"]
    sigma = torch.tensor([sigma_of(sched, eps, ti) for ti in t.tolist()])
    if cfg["loss"] == "mdlm_discrete_nelbo_token_mean":
        w = torch.tensor([discrete_weight(sched, eps, ti, cfg["T"]) for ti in t.tolist()])
    else:
        w = torch.tensor([continuous_weight(sched, eps, ti) for ti in t.tolist()])
    logits = model(zt, sigma)
    logits = logits + F.one_hot(torch.tensor(mask_id), cfg["vocab_size"]) * -1e6  # zero masking probability
    logp = torch.log_softmax(logits, dim=-1)
    unmasked = (zt != mask_id)[..., None]
    carry = torch.where(F.one_hot(zt, cfg["vocab_size"]) > 0, 0.0, float("-inf"))  # log one-hot of z_t
    logp = torch.where(unmasked, carry, logp)
    nll = -logp.gather(-1, x0[..., None])[..., 0]
    nll = torch.where(zt == mask_id, nll, torch.zeros_like(nll))  # carry-over rows: zero loss
    return (nll * w[:, None] * loss_mask).sum() / loss_mask.sum()


def ar_loss(model, cfg, x0, loss_mask):
    """Token-mean NLL of x[1:] given x[:-1] (causal model)."""
    logits = model(x0[:, :-1])
    nll = F.cross_entropy(logits.reshape(-1, cfg["vocab_size"]), x0[:, 1:].reshape(-1), reduction="none").view_as(x0[:, 1:])
    m = loss_mask[:, 1:]
    return (nll * m).sum() / m.sum()


# ------------------------------------------------------------------------------------------
# Data of one micro-batch: random tokens, padding, stratified t, absorbing-mask z_t.
# ------------------------------------------------------------------------------------------


def make_micro(cfg, gen, B):
    V, L = cfg["vocab_size"], cfg["seq_len"]
    mask_id = cfg["mask_id"]
    ids = [v for v in range(V) if v != mask_id]
    x0 = torch.tensor(ids)[torch.randint(len(ids), (B, L), generator=gen)]
    loss_mask = torch.ones(B, L)
    if cfg["padding"]:  # every other sequence ends early: pad id, loss mask 0
        for b in range(0, B, 2):
            n = int(torch.randint(2, L - 2, (1,), generator=gen))
            x0[b, n:] = cfg["pad_id"]
            loss_mask[b, n:] = 0
    if cfg["causal"]:
        return x0, x0.clone(), torch.zeros(B), loss_mask
    eps = cfg["eps"]
    r = float(torch.rand(1, generator=gen))
    u = torch.tensor([(r + i / B) % 1.0 for i in range(B)])  # stratified over the micro-batch
    t = (1 - eps) * u + eps
    if cfg["loss"] == "mdlm_discrete_nelbo_token_mean":
        T = cfg["T"]
        t = torch.clamp(torch.floor(t * T) / T + 1.0 / T, max=1.0)
    move = torch.tensor([float(1 - alpha_mp(cfg["schedule"], eps, ti)) for ti in t.tolist()])
    masked = torch.rand(B, L, generator=gen) < move[:, None]
    zt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return x0, zt, t, loss_mask


# ------------------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------------------


def lr_schedule(peak, warmup, steps, final_ratio):
    out = []
    for k in range(1, steps + 1):
        if k <= warmup:
            out.append(peak * k / warmup)
        else:
            p = (k - warmup) / (steps - warmup)
            out.append(peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * p))))
    return out


def init_weights(model, gen):
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm_final.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embedding"):
                b = 1 / math.sqrt(p.shape[1])
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * b)
            else:  # random, not the zero init, so every path carries signal
                fan_in = p.shape[1] if p.dim() == 2 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def run(cfg, data, clip):
    """Trains from the initial weights on `data`; returns the tensors of the file."""
    gen = torch.Generator().manual_seed(cfg["seed"])
    model = Backbone(cfg)
    init_weights(model, gen)
    params = dict(model.named_parameters())
    init = {k: v.detach().clone() for k, v in params.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"][0], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["adam_eps"],
                            weight_decay=cfg["weight_decay"], foreach=False)
    ema = {k: v.detach().clone() for k, v in params.items()}  # the EMA starts at the initial weights
    ema_updates = 0
    out, losses, norms = {}, [], []
    for k in range(1, cfg["steps"] + 1):
        opt.zero_grad(set_to_none=False)
        total = 0.0
        for m, (x0, zt, t, loss_mask) in enumerate(data[k - 1]):
            loss = ar_loss(model, cfg, x0, loss_mask) if cfg["causal"] else mdlm_loss(model, cfg, x0, zt, t, loss_mask)
            (loss / cfg["accum"]).backward()  # Lightning's accumulation
            total += loss.item() / cfg["accum"]
        if clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])))
        for group in opt.param_groups:
            group["lr"] = cfg["lr"][k - 1]
        opt.step()
        ema_updates += 1  # official ExponentialMovingAverage.update, after the optimizer step
        decay = min(cfg["ema"], (1 + ema_updates) / (10 + ema_updates))
        with torch.no_grad():
            for name, p in params.items():
                ema[name].sub_((1 - decay) * (ema[name] - p))
        losses.append(total)
        norms.append(norm)
    for name in params:
        out["init.backbone." + name] = init[name]
        out["final.backbone." + name] = params[name].detach().clone()
        out["final_ema.backbone." + name] = ema[name]
    for k in range(1, cfg["steps"] + 1):
        out[f"step.{k}.loss"] = torch.tensor(losses[k - 1])
        out[f"step.{k}.grad_norm"] = torch.tensor(norms[k - 1])
        for m, (x0, zt, t, loss_mask) in enumerate(data[k - 1]):
            out[f"step.{k}.micro.{m}.x0"] = x0.to(torch.int64)
            out[f"step.{k}.micro.{m}.zt"] = zt.to(torch.int64)
            out[f"step.{k}.micro.{m}.t"] = t.to(torch.float64)
            out[f"step.{k}.micro.{m}.loss_mask"] = loss_mask.to(torch.float64)
    return out, norms


MODEL_KEYS = ["vocab_size", "mask_id", "hidden", "n_heads", "n_blocks", "cond_dim", "mlp_ratio", "seq_len",
              "time_conditioning", "causal", "layer_norm_eps", "rope_base", "dropout"]
FILE_KEYS = MODEL_KEYS + ["loss", "T", "schedule", "eps", "lr", "beta1", "beta2", "adam_eps", "weight_decay", "clip", "ema",
                          "steps", "accum", "batch", "seed"]


def make(name, out_dir, **over):
    cfg = dict(vocab_size=41, mask_id=40, hidden=32, n_heads=4, n_blocks=2, cond_dim=16, mlp_ratio=4, seq_len=16,
               time_conditioning=False, causal=False, layer_norm_eps=1e-5, rope_base=10000.0, dropout=0.0,
               loss="mdlm_continuous_nelbo_token_mean", schedule="loglinear", eps=1e-3, beta1=0.9, beta2=0.999,
               adam_eps=1e-8, weight_decay=0.1, ema=0.999, steps=32, accum=1, batch=4, seed=0, padding=False, pad_id=0,
               peak_lr=3e-3, warmup=6, final_ratio=0.1, clip_quantile=0.5)
    cfg.update(over)
    cfg["lr"] = lr_schedule(cfg["peak_lr"], cfg["warmup"], cfg["steps"], cfg["final_ratio"])
    gen = torch.Generator().manual_seed(1000 + cfg["seed"])
    data = [[make_micro(cfg, gen, cfg["batch"]) for _ in range(cfg["accum"])] for _ in range(cfg["steps"])]
    # A dry run without clipping gives the gradient norms; the clip threshold is set at a
    # quantile of them, so clipping is active on some steps and not on others.
    # clip_quantile None: clipping off (clip 0).
    if cfg["clip_quantile"] is None:
        cfg["clip"] = 0.0
        tensors, norms = run(cfg, data, 0.0)
        clipped = 0
    else:
        _, dry = run(cfg, data, 0.0)
        clip = sorted(dry)[int(cfg["clip_quantile"] * (len(dry) - 1))]
        cfg["clip"] = float(f"{clip:.3g}")
        tensors, norms = run(cfg, data, cfg["clip"])
        clipped = sum(n > cfg["clip"] for n in norms)
        assert 0 < clipped < cfg["steps"], (name, clipped)
    meta = {k: cfg[k] for k in FILE_KEYS if k in cfg and not (k == "T" and cfg["loss"] != "mdlm_discrete_nelbo_token_mean")}
    if cfg["causal"]:
        meta["mask_id"] = None
    path = os.path.join(out_dir, name + ".safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path,
              metadata={"format": "mdlm-trajectory-v1", "config": json.dumps(meta)})
    losses = [float(tensors[f"step.{k}.loss"]) for k in range(1, cfg["steps"] + 1)]
    print(f"{path}: {cfg['steps']} steps x {cfg['accum']} micro-batches of {cfg['batch']}x{cfg['seq_len']}, "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, clip {cfg['clip']} active on {clipped} steps, "
          f"{os.path.getsize(path) / 1e6:.2f} MB")


CASES = {
    # continuous NELBO, log-linear, time conditioning off, no padding, accumulation 1, mask id appended
    "mdlm_loglinear_accum1": dict(seed=1, steps=40),
    # continuous NELBO, cosine, time conditioning on, padding, accumulation 3, mask id inside the vocabulary,
    # head dim 16
    "mdlm_cosine_timecond_pad_accum3": dict(seed=2, vocab_size=37, mask_id=3, n_heads=2, cond_dim=8, seq_len=12, batch=3,
                                            accum=3, schedule="cosine", time_conditioning=True, padding=True, steps=30,
                                            mlp_ratio=2, warmup=4),
    # discrete-time NELBO (T = 8), cosine, time conditioning off, padding, 3 blocks
    "mdlm_discrete_T8_cosine_pad": dict(seed=3, loss="mdlm_discrete_nelbo_token_mean", T=8, schedule="cosine",
                                        padding=True, n_blocks=3, hidden=24, n_heads=3, steps=32, ema=0.999),
    # discrete-time NELBO (T = 20), log-linear, time conditioning on, accumulation 3
    "mdlm_discrete_T20_loglinear_timecond_accum3": dict(seed=4, loss="mdlm_discrete_nelbo_token_mean", T=20,
                                                        time_conditioning=True, accum=3, batch=2, steps=30, n_blocks=1),
    # AR baseline: token-mean NLL, causal, padding, accumulation 3; EMA decay 0.75, so the decay
    # min(0.75, (1+n)/(10+n)) reaches its cap from n = 26 on (with 0.999 the warm-up term always wins)
    "ar_pad_accum3": dict(seed=5, causal=True, mask_id=None, loss="ar_token_mean_nll", padding=True, accum=3, batch=2,
                          steps=30, vocab_size=38, ema=0.75),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data", "trajectories"))
    ap.add_argument("--only", default=None, help="make only this case")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name, over in CASES.items():
        if args.only is None or args.only == name:
            make(name, args.out, **over)


if __name__ == "__main__":
    sys.exit(main())
