"""Self-checks of the reference and of the fixtures it wrote.

Run from the repository root after make_fixtures.py (which also calls this):

    python tools/reference/check_reference.py

Exits non-zero on the first failed check.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lova_reference as ref  # noqa: E402
from make_fixtures import FIXTURES, SAMPLER, storage_dtype  # noqa: E402

F64 = torch.float64
# The tiny model's shapes (embed 256 so that cross-attention has 2 kv heads,
# depth 2, full 3000-row PE tables, fp16 weights) fix its checkpoint at ~7.9 MB;
# the adaLN one is ~1.7 MB. This ceiling catches accidental growth.
MAX_TOTAL_BYTES = 11 * 1000 * 1000


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(F64), b.to(F64)
    return ((a - b).norm() / b.norm()).item()


def check(cond: bool, msg: str) -> None:
    print(("  ok   " if cond else "  FAIL ") + msg)
    if not cond:
        sys.exit(1)


def load(name: str):
    cfg = ref.read_config(f"{FIXTURES}/{name}/model_config.json")
    stored = load_file(f"{FIXTURES}/{name}/checkpoint.safetensors")
    return cfg, stored, ref.to_dtype(stored, F64)


def check_schedule() -> None:
    print("(a) sigma schedule")
    n = SAMPLER["steps"]
    s = ref.polyexponential_sigmas(n, SAMPLER["sigma_min"], SAMPLER["sigma_max"], SAMPLER["rho"])
    check(s.shape == (n + 1,), f"length steps+1 = {n + 1}")
    check(math.isclose(s[0].item(), SAMPLER["sigma_max"], rel_tol=1e-12), f"sigmas[0] = {s[0].item()!r} ~ sigma_max")
    check(math.isclose(s[n - 1].item(), SAMPLER["sigma_min"], rel_tol=1e-12), f"sigmas[{n - 1}] = {s[n - 1].item()!r} ~ sigma_min")
    check(s[n].item() == 0.0, "sigmas[-1] == 0")
    check(bool((s[:-1][1:] < s[:-1][:-1]).all()), "strictly decreasing")
    for eta in (0, 1):
        stored = load_file(f"{FIXTURES}/tiny/sampler_eta{eta}.safetensors")["sigmas"]
        check(stored.dtype == F64 and torch.equal(stored, s), f"sampler_eta{eta}.sigmas equals the schedule")


def check_checkpoint_dtypes() -> None:
    print("storage dtypes and key layout")
    for name in ("tiny", "adaln"):
        cfg, stored, _ = load(name)
        shapes = ref.param_shapes(cfg)
        missing = [k for k in shapes if k not in stored]
        check(not missing, f"{name}: all {len(shapes)} engine keys present")
        bad = [k for k, v in shapes.items() if list(stored[k].shape) != v]
        check(not bad, f"{name}: shapes match the config")
        wrong = [k for k, v in stored.items() if v.dtype != storage_dtype(k)]
        check(not wrong, f"{name}: storage dtypes (fp16/bf16/fp32) as specified")
        extra = sorted(set(stored) - set(shapes))
        print(f"       {name}: ignored extra keys {extra}")


def check_dit(name: str, prefixes) -> None:
    print(f"(b)+(c) DiT, {name}")
    cfg, _, p64 = load(name)
    cases = load_file(f"{FIXTURES}/{name}/dit_cases.safetensors")
    for pf in prefixes:
        x, f = cases[pf + "x"].to(F64), cases[pf + "features"].to(F64)
        t = float(cases[pf + "t"][0])
        zeros = torch.zeros_like(f)

        v_cond = ref.dit_forward(p64, cfg, x, t, f)
        v_uncond = ref.dit_forward(p64, cfg, x, t, zeros)
        check(rel_l2(cases[pf + "v_cond"], v_cond) < 1e-6, f"{pf} stored v_cond reproduces")
        check(rel_l2(cases[pf + "v_uncond"], v_uncond) < 1e-6, f"{pf} stored v_uncond reproduces")
        check(bool(torch.isfinite(v_cond).all() and torch.isfinite(v_uncond).all()), f"{pf} finite")
        d = rel_l2(v_cond, v_uncond)
        check(d > 1e-2, f"{pf} features matter: rel(v_cond, v_uncond) = {d:.3g}")

        # (b) the uncond context is PE_c, not zero: zeroing after to_cond_embed must differ.
        v_zero_ctx = ref.dit_forward(p64, cfg, x, t, zeros, context_override=torch.zeros(f.shape[0], cfg.cond_token_dim, dtype=F64))
        d = rel_l2(v_zero_ctx, v_uncond)
        check(d > 1e-2, f"{pf} uncond != zero-context run: rel = {d:.3g} (PE_c trap honoured)")

        # (c) a float32 run agrees with the float64 one.
        v32 = ref.dit_forward(ref.to_dtype(p64, torch.float32), cfg, x.float(), t, f.float())
        e = rel_l2(v32, v_cond)
        check(e < 1e-4, f"{pf} float32 vs float64 rel L2 = {e:.3g}")


def check_primitives() -> None:
    """Compare the hand-written pieces with torch's own implementations."""
    print("primitives vs torch built-ins")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 32, generator=g, dtype=F64)
    gamma, beta = torch.randn(32, generator=g, dtype=F64), torch.randn(32, generator=g, dtype=F64)
    check(rel_l2(ref._layer_norm(x, gamma, beta), F.layer_norm(x, (32,), gamma, beta, eps=ref.LN_EPS)) < 1e-14, "layer norm")
    q = torch.randn(4, 9, 64, generator=g, dtype=F64)
    k = torch.randn(2, 5, 64, generator=g, dtype=F64)
    v = torch.randn(2, 5, 64, generator=g, dtype=F64)
    mine = ref._attention(q, k.repeat_interleave(2, 0), v.repeat_interleave(2, 0))
    theirs = F.scaled_dot_product_attention(q[None], k[None], v[None], enable_gqa=True)[0]
    check(rel_l2(mine, theirs) < 1e-12, "grouped-query attention (q head j -> kv head j // group)")
    # RoPE at position 0 is the identity; dims 32..63 never change.
    inv = 10000.0 ** (-2 * torch.arange(16, dtype=F64) / 32)
    r = ref._rope(q, inv)
    check(torch.equal(r[:, 0], q[:, 0]) and torch.equal(r[..., 32:], q[..., 32:]), "RoPE: pos 0 identity, dims 32.. untouched")
    check(torch.allclose(r.norm(dim=-1), q.norm(dim=-1), rtol=1e-12), "RoPE is a rotation")


def check_sampler() -> None:
    print("sampler fixtures reproduce")
    cfg, _, p64 = load("tiny")
    f = load_file(f"{FIXTURES}/tiny/features.safetensors")["features"].to(F64)
    noise = load_file(f"{FIXTURES}/tiny/init_noise.safetensors")["noise"].to(F64)
    for eta in (0, 1):
        path = f"{FIXTURES}/tiny/sampler_eta{eta}.safetensors"
        fx = load_file(path)
        with safe_open(path, "pt") as fh:
            meta = json.loads(fh.metadata()["settings"])
        check(meta["eta"] == eta and meta["steps"] == SAMPLER["steps"], f"eta{eta}: metadata {meta}")
        x = ref.sample_dpmpp_3m_sde(
            p64, cfg, f, noise, fx["sigmas"], cfg_scale=SAMPLER["cfg_scale"], eta=float(eta),
            s_noise=SAMPLER["s_noise"], step_noise=fx["step_noise"].to(F64) if eta else None,
        )
        check(rel_l2(fx["latents"], x) < 1e-6 and bool(torch.isfinite(x).all()), f"eta{eta}: latents reproduce, finite")
    l0 = load_file(f"{FIXTURES}/tiny/sampler_eta0.safetensors")["latents"]
    l1 = load_file(f"{FIXTURES}/tiny/sampler_eta1.safetensors")["latents"]
    check(rel_l2(l1, l0) > 1e-2, f"eta0 and eta1 differ: rel = {rel_l2(l1, l0):.3g}")


def check_sizes() -> None:
    total = 0
    for root, _, files in os.walk(FIXTURES):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in files)
    check(total < MAX_TOTAL_BYTES, f"fixtures total {total / 1e6:.2f} MB < {MAX_TOTAL_BYTES / 1e6:.0f} MB")


def main() -> None:
    torch.use_deterministic_algorithms(True)
    print("self-checks:")
    check_schedule()
    check_checkpoint_dtypes()
    check_primitives()
    check_dit("tiny", ["a.", "b."])
    check_dit("adaln", ["a."])
    check_sampler()
    check_sizes()
    print("all checks passed")


if __name__ == "__main__":
    main()
