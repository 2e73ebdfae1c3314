"""One LoVA sampler step in PyTorch, timed next to lova-fast on the same machine.

The step is what lova-fast's step graph computes (docs/lova-model.md sections 4
and 5): the DiT on a batch of 2 (cond + uncond, the uncond features zeroed
before to_cond_embed), classifier-free guidance, the v-denoiser and one DPM++
3M SDE update with both history terms and fresh noise. The DiT is a batched
module written for speed the way a PyTorch user would: fp16 weights and
activations, `F.scaled_dot_product_attention` (grouped-query cross-attention
with the kv heads repeated), RoPE in fp32, `F.layer_norm`. Weights are random at the
config's full size (the released vl30 config: ~1.05 B parameters, ~2.1 GB fp16).

It times the step in eager mode and with `torch.compile` (skipped with a
message if compiling fails), with CUDA events after warm-up, for each clip
length, runs `lova-fast bench --json` for the same lengths (on the CPU with
`--precision`, by default the one matching --dtype: bf16 for bfloat16, else f32) (binary from
--lova-fast or $LOVA_FAST_BIN; PyTorch figures only when it is missing), and
prints both side by side with the ratio.

    python tools/reference/bench_torch.py                      # CUDA, fp16, 10/30/60 s
    python tools/reference/bench_torch.py --device cpu --tiny  # smoke test: tiny config, float32
    python tools/reference/bench_torch.py --device cpu --dtype bfloat16 --seconds 2,10  # both in bf16
    python tools/reference/bench_torch.py --device cpu --dtype bfloat16,float32 --seconds 2,10  # PyTorch in each
    python tools/reference/bench_torch.py --device cpu --tiny --check  # + agreement with lova_reference.py

`--check` compares the batched module with lova_reference.dit_forward (float64,
written independently from the doc) on the tiny config, and the folded sampler
update with the doc's formulas, on the CPU before timing (a second or two).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import lova_reference as ref  # noqa: E402

RELEASED_CONFIG = ROOT / "configs" / "lova-vl30.json"
TINY_CONFIG = ROOT / "tests" / "fixtures" / "tiny" / "model_config.json"
# A step in the middle of a 150-step run: the full 3M update (two history terms, noise).
STEPS, STEP_INDEX = 150, 75
SIGMA_MIN, SIGMA_MAX, CFG_SCALE, ETA = 0.3, 500.0, 5.0, 1.0


def random_params(cfg: ref.DiTConfig, device: str, dtype: torch.dtype, seed: int = 1) -> ref.Params:
    """Every DiT tensor at its checkpoint key and shape, random but tame: matrices
    ~N(0, 0.5 / fan_in) so fp16 activations stay finite through the blocks,
    LayerNorm gamma 1 / beta 0, the real RoPE frequencies."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = {}
    for key, shape in ref.param_shapes(cfg).items():
        name = key[len(ref.PREFIX):]
        if name.endswith(".gamma"):
            t = torch.ones(shape, device=device, dtype=dtype)
        elif name.endswith(".beta") or name.endswith(".bias"):
            t = torch.zeros(shape, device=device, dtype=dtype)
        elif name == "transformer.rotary_pos_emb.inv_freq":
            k = torch.arange(ref.ROTARY_DIM // 2, device=device, dtype=torch.float64)
            t = (10000.0 ** (-2 * k / ref.ROTARY_DIM)).to(dtype)
        else:
            fan_in = shape[1] if len(shape) >= 2 and "pos_emb" not in name else 1
            std = math.sqrt(0.5 / fan_in)
            t = (torch.randn(shape, device=device, dtype=torch.float32, generator=gen) * std).to(dtype)
        params[key] = t
    return params


def _sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: query head j reads kv head j // (H / KV). The kv
    heads are repeated rather than passed with `enable_gqa=True`, which not every
    fused SDPA kernel supports in every PyTorch version (a fallback to the math
    kernel would make PyTorch look slower than it is); the copy is tiny (N video tokens)."""
    group = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))


class BatchedDiT:
    """The DiT forward on a dense batch [B, T', io] (every sequence the same length,
    as cond + uncond of one clip are), reading the weights of `ref.param_shapes`."""

    def __init__(self, params: ref.Params, cfg: ref.DiTConfig):
        if not cfg.prepend:
            raise SystemExit("bench_torch.py times the prepend config (LoVA's); adaLN is not implemented here")
        self.cfg = cfg
        p = lambda k: params[ref.PREFIX + k]  # noqa: E731
        self.p = p
        self.layers = [
            {name: p(f"transformer.layers.{i}.{name}") for name in (
                "pre_norm.gamma", "pre_norm.beta", "self_attn.to_qkv.weight", "self_attn.to_out.weight",
                "cross_attend_norm.gamma", "cross_attend_norm.beta", "cross_attn.to_q.weight",
                "cross_attn.to_kv.weight", "cross_attn.to_out.weight", "ff_norm.gamma", "ff_norm.beta",
                "ff.ff.0.proj.weight", "ff.ff.0.proj.bias", "ff.ff.2.weight", "ff.ff.2.bias")}
            for i in range(cfg.depth)
        ]

    def rope_tables(self, tokens: int, device, acc: torch.dtype) -> tuple:
        """cos/sin [tokens, 32] in `acc` (fp32, or fp64 for --check) for positions 0..tokens-1."""
        inv_freq = self.p("transformer.rotary_pos_emb.inv_freq").to(acc)
        theta = torch.arange(tokens, device=device, dtype=acc)[:, None] * inv_freq[None, :]
        freqs = torch.cat([theta, theta], dim=-1)
        return freqs.cos(), freqs.sin()

    @staticmethod
    def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, 64]: the first 32 dims rotate (in the tables' precision), the rest pass."""
        r, rest = x[..., : ref.ROTARY_DIM].to(cos.dtype), x[..., ref.ROTARY_DIM:]
        half = ref.ROTARY_DIM // 2
        rot = torch.cat([-r[..., half:], r[..., :half]], dim=-1)
        return torch.cat([(r * cos + rot * sin).to(x.dtype), rest], dim=-1)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """x [B, T', io] (times c_in), t [B] (fp32), f [B, N, cond_dim] -> v [B, T', io]."""
        cfg, p = self.cfg, self.p
        E, H, KV, D = cfg.embed_dim, cfg.num_heads, cfg.kv_heads, ref.HEAD_DIM
        B, T1, _ = x.shape
        N = f.shape[1]
        dtype = x.dtype
        acc = torch.promote_types(dtype, torch.float32)  # angles and RoPE at least in fp32

        w = p("timestep_features.weight")[:, 0].to(acc)
        a = 2 * math.pi * t.to(acc)[:, None] * w[None, :]
        feat = torch.cat([a.cos(), a.sin()], dim=-1).to(dtype)
        te = F.linear(F.silu(F.linear(feat, p("to_timestep_embed.0.weight"), p("to_timestep_embed.0.bias"))),
                      p("to_timestep_embed.2.weight"), p("to_timestep_embed.2.bias"))
        c = F.linear(F.silu(F.linear(f, p("to_cond_embed.0.weight"))), p("to_cond_embed.2.weight"))
        c = c + p("transformer.pos_emb_cond.emb.weight")[:N] * cfg.cond_token_dim ** -0.5

        x = x + F.linear(x, p("preprocess_conv.weight")[:, :, 0])
        h = torch.cat([te[:, None, :], F.linear(x, p("transformer.project_in.weight"))], dim=1)
        T = T1 + 1
        h = h + p("transformer.pos_emb.emb.weight")[:T] * E ** -0.5
        cos, sin = self.rope_tables(T, x.device, acc)

        for L in self.layers:
            y = F.layer_norm(h, (E,), L["pre_norm.gamma"], L["pre_norm.beta"], ref.LN_EPS)
            q, k, v = F.linear(y, L["self_attn.to_qkv.weight"]).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
            q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, E)
            h = h + F.linear(o, L["self_attn.to_out.weight"])

            y = F.layer_norm(h, (E,), L["cross_attend_norm.gamma"], L["cross_attend_norm.beta"], ref.LN_EPS)
            q = F.linear(y, L["cross_attn.to_q.weight"]).view(B, T, H, D).transpose(1, 2)
            k, v = F.linear(c, L["cross_attn.to_kv.weight"]).view(B, N, 2, KV, D).permute(2, 0, 3, 1, 4)
            o = _sdpa_gqa(q, k, v).transpose(1, 2).reshape(B, T, E)
            h = h + F.linear(o, L["cross_attn.to_out.weight"])

            y = F.layer_norm(h, (E,), L["ff_norm.gamma"], L["ff_norm.beta"], ref.LN_EPS)
            u, g = F.linear(y, L["ff.ff.0.proj.weight"], L["ff.ff.0.proj.bias"]).chunk(2, dim=-1)
            h = h + F.linear(u * F.silu(g), L["ff.ff.2.weight"], L["ff.ff.2.bias"])

        out = F.linear(h, p("transformer.project_out.weight"))[:, 1:]
        return out + F.linear(out, p("postprocess_conv.weight")[:, :, 0])


def step_coefficients(i: int) -> Dict[str, float]:
    """Host-side (f64) scalars of sampler step i: v-denoiser scalings and the 3M
    SDE update folded into x' = a x + b denoised + c d1 + d d2 + e z."""
    s = [float(v) for v in ref.polyexponential_sigmas(STEPS, SIGMA_MIN, SIGMA_MAX)]
    sigma, nxt = s[i], s[i + 1]
    h = math.log(sigma) - math.log(nxt)
    h1 = math.log(s[i - 1]) - math.log(s[i])
    h2 = math.log(s[i - 2]) - math.log(s[i - 1])
    he = h * (ETA + 1)
    phi2 = math.expm1(-he) / he + 1
    phi3 = phi2 / he - 0.5
    r0, r1 = h1 / h, h2 / h
    # x' = e^-he x + (1 - e^-he) den + phi2 dd1 - phi3 dd2, with
    # D0 = (den - d1)/r0, D1 = (d1 - d2)/r1, dd1 = D0 + (D0 - D1) r0/(r0 + r1), dd2 = (D0 - D1)/(r0 + r1).
    k0 = 1 + r0 / (r0 + r1)  # dd1 = k0 D0 - k1 D1
    k1 = r0 / (r0 + r1)
    inv = 1 / (r0 + r1)  # dd2 = inv (D0 - D1)
    cD0 = phi2 * k0 - phi3 * inv
    cD1 = -phi2 * k1 + phi3 * inv
    return {
        "c_in": 1 / math.sqrt(sigma**2 + 1),
        "c_skip": 1 / (sigma**2 + 1),
        "c_out": -sigma / math.sqrt(sigma**2 + 1),
        "t": math.atan(sigma) * 2 / math.pi,
        "x": math.exp(-he),
        "den": -math.expm1(-he) + cD0 / r0,
        "d1": -cD0 / r0 + cD1 / r1,
        "d2": -cD1 / r1,
        "z": nxt * math.sqrt(-math.expm1(-2 * h * ETA)),
    }


def make_step(dit: BatchedDiT, k: Dict[str, float], dtype: torch.dtype) -> Callable:
    """One sampler step on fp32 state (x, d1, d2): returns (x', denoised)."""

    def step(x, d1, d2, f2, t2, z):
        x_in = (x * k["c_in"]).to(dtype).expand(2, -1, -1)
        v = dit(x_in, t2, f2).float()
        v = v[1] + (v[0] - v[1]) * CFG_SCALE
        den = v * k["c_out"] + x[0] * k["c_skip"]
        x_next = k["x"] * x[0] + k["den"] * den + k["d1"] * d1 + k["d2"] * d2 + k["z"] * z
        return x_next[None], den

    return step


def time_step(fn: Callable, inputs: tuple, warmup: int, iters: int, device: str) -> List[float]:
    """Milliseconds per call, each call timed alone (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn(*inputs)
    times = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            started = time.perf_counter()
            fn(*inputs)
            times.append((time.perf_counter() - started) * 1e3)
    return times


def check_against_reference(cfg: ref.DiTConfig) -> None:
    """The batched module vs lova_reference.dit_forward, float64, cond and uncond."""
    params = random_params(cfg, "cpu", torch.float64, seed=7)
    dit = BatchedDiT(params, cfg)
    gen = torch.Generator().manual_seed(3)
    latent_len, frames, t = 23, 9, 0.37
    x = torch.randn(cfg.io_channels, latent_len, dtype=torch.float64, generator=gen)
    f = torch.randn(frames, cfg.cond_dim, dtype=torch.float64, generator=gen)
    f2 = torch.stack([f, torch.zeros_like(f)])
    got = dit(x.T[None].expand(2, -1, -1), torch.full((2,), t, dtype=torch.float64), f2)
    for b, name in enumerate(("cond", "uncond")):
        want = ref.dit_forward(params, cfg, x, t, f2[b]).T
        err = ((got[b] - want).norm() / want.norm()).item()
        print(f"check: batched module vs lova_reference.dit_forward ({name}): rel L2 {err:.2e}")
        if not err < 1e-10:
            raise SystemExit(f"the batched DiT disagrees with the reference ({name}: {err:.2e})")

    # The folded update coefficients vs the doc's DPM++ 3M SDE formulas (as in
    # lova_reference.sample_dpmpp_3m_sde), on random state.
    i = STEP_INDEX
    sig = [float(v) for v in ref.polyexponential_sigmas(STEPS, SIGMA_MIN, SIGMA_MAX)]
    xs, den, d1, d2, z = (torch.randn(5, 3, dtype=torch.float64, generator=gen) for _ in range(5))
    h = math.log(sig[i]) - math.log(sig[i + 1])
    h1, h2 = math.log(sig[i - 1]) - math.log(sig[i]), math.log(sig[i - 2]) - math.log(sig[i - 1])
    he = h * (ETA + 1)
    want = math.exp(-he) * xs + (-math.expm1(-he)) * den
    r0, r1 = h1 / h, h2 / h
    D0, D1 = (den - d1) / r0, (d1 - d2) / r1
    phi2 = math.expm1(-he) / he + 1
    phi3 = phi2 / he - 0.5
    want = want + phi2 * (D0 + (D0 - D1) * r0 / (r0 + r1)) - phi3 * (D0 - D1) / (r0 + r1)
    want = want + z * sig[i + 1] * math.sqrt(-math.expm1(-2 * h * ETA))
    k = step_coefficients(i)
    got = k["x"] * xs + k["den"] * den + k["d1"] * d1 + k["d2"] * d2 + k["z"] * z
    err = ((got - want).norm() / want.norm()).item()
    print(f"check: folded DPM++ 3M SDE update vs the doc's formulas: rel L2 {err:.2e}")
    if not err < 1e-12:
        raise SystemExit(f"the folded sampler update is wrong ({err:.2e})")


def run_lova_fast(binary: Optional[str], args, seconds: List[float], device: str) -> Optional[dict]:
    if not binary:
        print("lova-fast: no binary (--lova-fast or $LOVA_FAST_BIN): PyTorch figures only")
        return None
    if not (os.path.isfile(binary) or shutil.which(binary)):
        print(f"lova-fast: {binary} not found: PyTorch figures only")
        return None
    cmd = [binary, "bench", "--json", "--device", "cuda" if device.startswith("cuda") else "cpu",
           "--seconds", ",".join(f"{s:g}" for s in seconds), "--steps", str(args.iters), "--warmup", str(args.warmup)]
    if args.tiny:
        cmd += ["--config", str(TINY_CONFIG)]
    if not device.startswith("cuda"):
        cmd += ["--precision", args.precision]
    print("lova-fast: " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    print(done.stderr, end="", flush=True)  # its table and notes
    if done.returncode != 0:
        print(f"lova-fast failed (exit {done.returncode}): PyTorch figures only")
        return None
    return json.loads(done.stdout)


def fmt(v: Optional[float], spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="the tiny test config (tests/fixtures/tiny), float32")
    ap.add_argument("--dtype", help="float16, bfloat16 or float32, or several comma-separated to time PyTorch in "
                    "each (e.g. bfloat16,float32 on a CPU without native bf16, where float32 is PyTorch's fastest); "
                    "default: float16 on CUDA, float32 on the CPU")
    ap.add_argument("--precision", choices=["f32", "bf16", "auto"],
                    help="lova-fast's --precision on the CPU (default: bf16 with --dtype bfloat16, else f32)")
    ap.add_argument("--seconds", default="10,30,60", help="clip lengths, comma-separated")
    ap.add_argument("--compile-seconds", help="clip lengths to also time with torch.compile (each compiles "
                    "anew; default: all; 'none' to skip)")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode, e.g. reduce-overhead (CUDA graphs) or max-autotune")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--lova-fast", default=os.environ.get("LOVA_FAST_BIN"), help="lova-fast binary")
    ap.add_argument("--check", action="store_true",
                    help="first compare with lova_reference.py (tiny config, float64, CPU)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    cfg = ref.read_config(str(TINY_CONFIG if args.tiny else RELEASED_CONFIG))
    if args.check:
        check_against_reference(ref.read_config(str(TINY_CONFIG)))
    device = args.device
    dtype_names = (args.dtype or ("float16" if device.startswith("cuda") else "float32")).split(",")
    for name in dtype_names:
        if name not in ("float16", "bfloat16", "float32"):
            ap.error(f"--dtype {name}: expected float16, bfloat16 or float32")
    dtypes = [getattr(torch, name) for name in dtype_names]
    if args.precision is None:
        args.precision = "bf16" if torch.bfloat16 in dtypes else "f32"
    seconds = [float(s) for s in args.seconds.split(",")]
    if args.compile_seconds is None:
        compile_seconds = seconds
    elif args.compile_seconds == "none":
        compile_seconds = []
    else:
        compile_seconds = [float(s) for s in args.compile_seconds.split(",")]

    # lova-fast first, so that PyTorch holds no device memory while it measures.
    lova = run_lova_fast(args.lova_fast, args, seconds, device)
    lova_ms = {c["seconds"]: c for c in lova["clips"]} if lova else {}

    card = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    rows = []
    for dtype in dtypes:
        print(f"PyTorch {torch.__version__} on {card}, {dtype}, config {'tiny' if args.tiny else 'vl30'}")
        torch.manual_seed(0)
        started = time.perf_counter()
        params = random_params(cfg, device, dtype)
        dit = BatchedDiT(params, cfg)
        n_params = sum(t.numel() for t in params.values())
        print(f"DiT: {n_params / 1e6:.0f} M random parameters ({n_params * params[ref.PREFIX + 'preprocess_conv.weight'].element_size() / 2**30:.2f} GiB) "
              f"made in {time.perf_counter() - started:.1f} s")
        k = step_coefficients(STEP_INDEX)
        eager = make_step(dit, k, dtype)

        for s in seconds:
            frames = math.ceil(s * cfg.fps)
            latent_len = math.ceil(s * cfg.sample_rate / cfg.downsampling_ratio)
            gen = torch.Generator(device=device).manual_seed(2)
            x = torch.randn(1, latent_len, cfg.io_channels, device=device, generator=gen)
            d1, d2, z = (torch.randn(latent_len, cfg.io_channels, device=device, generator=gen) for _ in range(3))
            f = torch.randn(frames, cfg.cond_dim, device=device, generator=gen).to(dtype)
            f2 = torch.stack([f, torch.zeros_like(f)])
            t2 = torch.full((2,), k["t"], device=device)
            inputs = (x, d1, d2, f2, t2, z)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                eager_ms = statistics.median(time_step(eager, inputs, args.warmup, args.iters, device))
                finite = bool(torch.isfinite(eager(*inputs)[0]).all())
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None
            compiled_ms = None
            if s in compile_seconds:
                try:
                    compiled = torch.compile(make_step(dit, k, dtype), dynamic=False, mode=args.compile_mode)
                    c_started = time.perf_counter()
                    with torch.inference_mode():
                        compiled(*inputs)
                    compile_s = time.perf_counter() - c_started
                    with torch.inference_mode():
                        compiled_ms = statistics.median(time_step(compiled, inputs, args.warmup, args.iters, device))
                    print(f"{s:g} s: torch.compile took {compile_s:.1f} s")
                except Exception as e:  # noqa: BLE001 - any compiler failure only skips the column
                    print(f"{s:g} s: torch.compile failed, skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            lf = lova_ms.get(s)
            rows.append({
                "seconds": s, "tokens": latent_len + 1, "frames": frames, "dtype": str(dtype).replace("torch.", ""),
                "lova_fast_ms": lf["step_ms_median"] if lf else None,
                "lova_fast_tflops": lf["tflops"] if lf else None,
                "torch_eager_ms": eager_ms, "torch_compile_ms": compiled_ms,
                "torch_peak_mib": peak, "torch_finite": finite,
                "step_flops": lf["step_flops"] if lf else None,
                "lova_fast_mib": (lf["weights_bytes"] + lf["arena_bytes"]) / 2**20 if lf else None,
            })
            print(f"{s:g} s: eager {eager_ms:.2f} ms" + (f", peak {peak:.0f} MiB" if peak else "")
                  + ("" if finite else " (NON-FINITE output: weights too large for the dtype)"), flush=True)
        del eager, dit, params  # before the next dtype's copy of the weights

    print()
    print(f"one sampler step (DiT cond + uncond, CFG, DPM++ 3M SDE) on {card}; median ms; "
          f"ratio = PyTorch time / lova-fast time (> 1: lova-fast is faster); "
          f"MiB: lova-fast weights + arena, PyTorch peak allocated (eager)")
    header = (f"{'seconds':>7} | {'tokens':>6} | {'torch dtype':>11} | {'lova-fast ms':>12} | {'torch eager ms':>14} | "
              f"{'torch compile ms':>16} | {'ratio eager':>11} | {'ratio compile':>13} | "
              f"{'lova-fast MiB':>13} | {'torch MiB':>9}")
    print(header)
    print("-" * len(header))
    for r in rows:
        lf = r["lova_fast_ms"]
        ratio_e = r["torch_eager_ms"] / lf if lf else None
        ratio_c = r["torch_compile_ms"] / lf if lf and r["torch_compile_ms"] else None
        print(f"{r['seconds']:>7g} | {r['tokens']:>6} | {r['dtype']:>11} | {fmt(lf):>12} | {fmt(r['torch_eager_ms']):>14} | "
              f"{fmt(r['torch_compile_ms']):>16} | {fmt(ratio_e):>11} | {fmt(ratio_c):>13} | "
              f"{fmt(r['lova_fast_mib'], '.0f'):>13} | {fmt(r['torch_peak_mib'], '.0f'):>9}")
    if lova:
        print(f"lova-fast: {lova['device']}; start-up {lova['startup']['total_s']:.2f} s"
              + ("" if device.startswith("cuda") else f"; --precision {args.precision}"))
    print(f"PyTorch: {', '.join(dtype_names)} on {card}")
    if args.json:
        Path(args.json).write_text(json.dumps({"card": card, "torch": torch.__version__, "dtypes": dtype_names,
                                               "lova_fast": lova, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
