"""Plain-PyTorch reference for the LoVA DiT denoiser and its sampler.

Written from docs/lova-model.md (sections 1, 4, 5, 7), not from the original
training code, so that the Rust engine and this file are two independent
readings of the same specification. Everything operates on a dict of tensors
keyed by checkpoint key (prefix included); there are no nn.Modules, so every
operation the engine has to reproduce is visible here.

Computation runs in whatever dtype the parameters are given in. The fixtures
use float64 so that the reference is much more precise than the f32 engine it
is compared against (1e-4 relative L2).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

Params = Dict[str, torch.Tensor]

PREFIX = "model.model."
HEAD_DIM = 64
ROTARY_DIM = 32  # partial RoPE: only the first 32 of the 64 head dims rotate
LN_EPS = 1e-5


# --------------------------------------------------------------------------
# Config (section 1)
# --------------------------------------------------------------------------


@dataclass
class DiTConfig:
    io_channels: int
    embed_dim: int
    depth: int
    num_heads: int
    cond_token_dim: int
    global_cond_dim: Optional[int]
    global_cond_type: str  # "prepend" or "adaLN"
    abs_pos_emb_max_length: int
    cond_dim: int
    fps: float
    sample_rate: int
    downsampling_ratio: int

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.cond_token_dim // HEAD_DIM

    @property
    def ff_inner(self) -> int:
        return 4 * self.embed_dim

    @property
    def prepend(self) -> bool:
        return self.global_cond_type == "prepend"


def _refuse(field: str, value) -> None:
    raise ValueError(f"unsupported value for {field}: {value!r}")


def read_config(path: str) -> DiTConfig:
    """Read a LoVA-format model_config.json, refusing what the engine does not support."""
    with open(path) as fh:
        cfg = json.load(fh)
    model = cfg["model"]
    diff = model["diffusion"]
    dc = diff["config"]

    objective = diff.get("diffusion_objective", "v")
    if objective != "v":
        _refuse("model.diffusion.diffusion_objective", objective)
    ttype = dc.get("transformer_type", "continuous_transformer")
    if ttype != "continuous_transformer":
        _refuse("model.diffusion.config.transformer_type", ttype)
    if dc.get("patch_size", 1) != 1:
        _refuse("model.diffusion.config.patch_size", dc["patch_size"])
    if dc.get("rotary_cond_emb", False):
        _refuse("model.diffusion.config.rotary_cond_emb", True)
    if dc.get("project_cond_tokens", False):
        _refuse("model.diffusion.config.project_cond_tokens", True)
    if dc.get("use_sinusoidal_emb", False):
        _refuse("model.diffusion.config.use_sinusoidal_emb", True)
    if not dc.get("use_abs_pos_emb", True):
        _refuse("model.diffusion.config.use_abs_pos_emb", False)
    gtype = dc.get("global_cond_type", "prepend")
    if gtype not in ("prepend", "adaLN"):
        _refuse("model.diffusion.config.global_cond_type", gtype)

    out = DiTConfig(
        io_channels=dc["io_channels"],
        embed_dim=dc["embed_dim"],
        depth=dc["depth"],
        num_heads=dc["num_heads"],
        cond_token_dim=dc["cond_token_dim"],
        global_cond_dim=dc.get("global_cond_dim"),
        global_cond_type=gtype,
        abs_pos_emb_max_length=dc.get("abs_pos_emb_max_length", 3000),
        cond_dim=model["conditioning"]["cond_dim"],
        fps=cfg["fps"],
        sample_rate=cfg["sample_rate"],
        downsampling_ratio=model["pretransform"]["config"]["downsampling_ratio"],
    )
    if out.embed_dim % out.num_heads or out.head_dim != HEAD_DIM:
        _refuse("model.diffusion.config.num_heads", out.num_heads)
    if out.cond_token_dim % HEAD_DIM or out.num_heads % out.kv_heads:
        _refuse("model.diffusion.config.cond_token_dim", out.cond_token_dim)
    return out


def latent_length(cfg: DiTConfig, num_frames: int) -> int:
    """T' from the real video duration (section 7, Deviation): ceil(D * sr / 2048)."""
    duration = num_frames / cfg.fps
    return math.ceil(duration * cfg.sample_rate / cfg.downsampling_ratio)


# --------------------------------------------------------------------------
# Parameter key layout (checklist at the end of section 4)
# --------------------------------------------------------------------------


def param_shapes(cfg: DiTConfig) -> Dict[str, List[int]]:
    """Every key the engine needs, with its shape, derived from the config."""
    E, C, D = cfg.embed_dim, cfg.cond_token_dim, cfg.io_channels
    L = cfg.abs_pos_emb_max_length
    s = {
        "timestep_features.weight": [128, 1],
        "to_timestep_embed.0.weight": [E, 256],
        "to_timestep_embed.0.bias": [E],
        "to_timestep_embed.2.weight": [E, E],
        "to_timestep_embed.2.bias": [E],
        "to_cond_embed.0.weight": [C, cfg.cond_dim],
        "to_cond_embed.2.weight": [C, C],
        "preprocess_conv.weight": [D, D, 1],
        "postprocess_conv.weight": [D, D, 1],
        "transformer.project_in.weight": [E, D],
        "transformer.project_out.weight": [D, E],
        "transformer.rotary_pos_emb.inv_freq": [ROTARY_DIM // 2],
        "transformer.pos_emb.emb.weight": [L, E],
        "transformer.pos_emb_cond.emb.weight": [L, C],
    }
    for i in range(cfg.depth):
        b = f"transformer.layers.{i}."
        s.update({
            b + "pre_norm.gamma": [E],
            b + "pre_norm.beta": [E],
            b + "self_attn.to_qkv.weight": [3 * E, E],
            b + "self_attn.to_out.weight": [E, E],
            b + "cross_attend_norm.gamma": [E],
            b + "cross_attend_norm.beta": [E],
            b + "cross_attn.to_q.weight": [E, E],
            b + "cross_attn.to_kv.weight": [2 * C, C],
            b + "cross_attn.to_out.weight": [E, E],
            b + "ff_norm.gamma": [E],
            b + "ff_norm.beta": [E],
            b + "ff.ff.0.proj.weight": [2 * cfg.ff_inner, E],
            b + "ff.ff.0.proj.bias": [2 * cfg.ff_inner],
            b + "ff.ff.2.weight": [E, cfg.ff_inner],
            b + "ff.ff.2.bias": [E],
        })
        if not cfg.prepend:
            s[b + "to_scale_shift_gate.1.weight"] = [6 * E, E]
    return {PREFIX + k: v for k, v in s.items()}


def to_dtype(params: Params, dtype: torch.dtype) -> Params:
    """Upcast (or downcast) every stored tensor; the stored values are used exactly."""
    return {k: v.to(dtype) for k, v in params.items()}


# --------------------------------------------------------------------------
# DiT forward for one sequence (section 4)
# --------------------------------------------------------------------------


def _layer_norm(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * gamma + beta


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[T, n*64] -> [n, T, 64]; head j owns columns 64j..64j+63 (the `(h d)` layout)."""
    T = x.shape[0]
    return x.reshape(T, n, HEAD_DIM).transpose(0, 1)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    n, T, d = x.shape
    return x.transpose(0, 1).reshape(T, n * d)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [h, Tq, 64], k/v [h, Tk, 64]; no mask, non-causal."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
    return torch.softmax(scores, dim=-1) @ v


def _rope(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Partial RoPE on x [h, T, 64]: positions 0..T-1, only dims 0..31 rotate."""
    T = x.shape[1]
    pos = torch.arange(T, dtype=x.dtype)
    theta = pos[:, None] * inv_freq[None, :].to(x.dtype)  # [T, 16]
    freqs = torch.cat([theta, theta], dim=-1)  # [T, 32]
    r, rest = x[..., :ROTARY_DIM], x[..., ROTARY_DIM:]
    half = ROTARY_DIM // 2
    rot = torch.cat([-r[..., half:], r[..., :half]], dim=-1)
    r = r * torch.cos(freqs) + rot * torch.sin(freqs)
    return torch.cat([r, rest], dim=-1)


def timestep_embedding(p: Params, t: float, dtype: torch.dtype) -> torch.Tensor:
    """Fourier features of t through the 2-layer MLP -> te [embed_dim]."""
    w = p[PREFIX + "timestep_features.weight"][:, 0]  # [128]
    a = 2 * math.pi * torch.as_tensor(t, dtype=dtype) * w
    feat = torch.cat([torch.cos(a), torch.sin(a)])
    h = F.linear(feat, p[PREFIX + "to_timestep_embed.0.weight"], p[PREFIX + "to_timestep_embed.0.bias"])
    return F.linear(F.silu(h), p[PREFIX + "to_timestep_embed.2.weight"], p[PREFIX + "to_timestep_embed.2.bias"])


def cond_tokens(p: Params, cfg: DiTConfig, f: torch.Tensor) -> torch.Tensor:
    """Video features [N, cond_dim] -> context [N, cond_token_dim], PE_c included.

    PE_c is added after the MLP, so all-zero features (the uncond branch) give a
    context equal to the scaled PE_c rows, not zero.
    """
    N = f.shape[0]
    c = F.linear(F.silu(F.linear(f, p[PREFIX + "to_cond_embed.0.weight"])), p[PREFIX + "to_cond_embed.2.weight"])
    pe = p[PREFIX + "transformer.pos_emb_cond.emb.weight"][:N]
    return c + pe * cfg.cond_token_dim ** -0.5


def dit_forward(
    p: Params,
    cfg: DiTConfig,
    x: torch.Tensor,
    t: float,
    f: torch.Tensor,
    context_override: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """v-prediction for one sequence.

    x: [io_channels, T'] (already times c_in), t: scalar, f: [N, cond_dim].
    context_override replaces the context after to_cond_embed and PE_c; it only
    exists for the self-check that proves the uncond context is not zero.
    Returns [io_channels, T'].
    """
    dtype = x.dtype
    E, H = cfg.embed_dim, cfg.num_heads
    T = x.shape[1]
    group = H // cfg.kv_heads
    if T + (1 if cfg.prepend else 0) > cfg.abs_pos_emb_max_length or f.shape[0] > cfg.abs_pos_emb_max_length:
        raise ValueError("sequence longer than the PE tables (abs_pos_emb_max_length)")

    te = timestep_embedding(p, t, dtype)
    c = cond_tokens(p, cfg, f) if context_override is None else context_override

    # 1x1 convs are per-time-step matmuls over channels.
    x = x + p[PREFIX + "preprocess_conv.weight"][:, :, 0] @ x
    h = F.linear(x.T, p[PREFIX + "transformer.project_in.weight"])  # [T', E]

    if cfg.prepend:
        h = torch.cat([te[None, :], h], dim=0)
    # PE_z covers the prepended timestep token (position 0) when there is one.
    h = h + p[PREFIX + "transformer.pos_emb.emb.weight"][: h.shape[0]] * E ** -0.5

    inv_freq = p[PREFIX + "transformer.rotary_pos_emb.inv_freq"]
    if not cfg.prepend:
        silu_te = F.silu(te)

    for i in range(cfg.depth):
        b = f"{PREFIX}transformer.layers.{i}."
        if not cfg.prepend:
            # Chunk order follows stable-audio-tools' TransformerBlock.
            mod = F.linear(silu_te, p[b + "to_scale_shift_gate.1.weight"])
            scale_self, shift_self, gate_self, scale_ff, shift_ff, gate_ff = mod.chunk(6)

        # Self-attention with partial RoPE.
        y = _layer_norm(h, p[b + "pre_norm.gamma"], p[b + "pre_norm.beta"])
        if not cfg.prepend:
            y = y * (1 + scale_self) + shift_self
        q, k, v = F.linear(y, p[b + "self_attn.to_qkv.weight"]).chunk(3, dim=-1)
        q, k, v = _heads(q, H), _heads(k, H), _heads(v, H)
        q, k = _rope(q, inv_freq), _rope(k, inv_freq)
        y = F.linear(_merge_heads(_attention(q, k, v)), p[b + "self_attn.to_out.weight"])
        if not cfg.prepend:
            y = y * torch.sigmoid(1 - gate_self)
        h = h + y

        # Cross-attention to the video tokens, grouped-query: q head j reads kv head j // group.
        y = _layer_norm(h, p[b + "cross_attend_norm.gamma"], p[b + "cross_attend_norm.beta"])
        q = _heads(F.linear(y, p[b + "cross_attn.to_q.weight"]), H)
        k, v = F.linear(c, p[b + "cross_attn.to_kv.weight"]).chunk(2, dim=-1)
        k = _heads(k, cfg.kv_heads).repeat_interleave(group, dim=0)
        v = _heads(v, cfg.kv_heads).repeat_interleave(group, dim=0)
        h = h + F.linear(_merge_heads(_attention(q, k, v)), p[b + "cross_attn.to_out.weight"])

        # SwiGLU feed-forward: u = first half, g = second half.
        y = _layer_norm(h, p[b + "ff_norm.gamma"], p[b + "ff_norm.beta"])
        if not cfg.prepend:
            y = y * (1 + scale_ff) + shift_ff
        u, g = F.linear(y, p[b + "ff.ff.0.proj.weight"], p[b + "ff.ff.0.proj.bias"]).chunk(2, dim=-1)
        y = F.linear(u * F.silu(g), p[b + "ff.ff.2.weight"], p[b + "ff.ff.2.bias"])
        if not cfg.prepend:
            y = y * torch.sigmoid(1 - gate_ff)
        h = h + y

    out = F.linear(h, p[PREFIX + "transformer.project_out.weight"])  # [T'(+1), io]
    if cfg.prepend:
        out = out[1:]
    out = out.T
    return out + p[PREFIX + "postprocess_conv.weight"][:, :, 0] @ out


# --------------------------------------------------------------------------
# Sampler (section 5)
# --------------------------------------------------------------------------


def polyexponential_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """[steps + 1] float64, the last entry the appended 0."""
    i = torch.arange(steps, dtype=torch.float64)
    ramp = (1 - i / (steps - 1)) ** rho
    lmin, lmax = math.log(sigma_min), math.log(sigma_max)
    sigmas = torch.exp(ramp * (lmax - lmin) + lmin)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def denoise(p: Params, cfg: DiTConfig, x: torch.Tensor, sigma: float, f: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """VDenoiser (sigma_data = 1) around the CFG-combined DiT."""
    c_skip = 1.0 / (sigma ** 2 + 1)
    c_out = -sigma / math.sqrt(sigma ** 2 + 1)
    c_in = 1.0 / math.sqrt(sigma ** 2 + 1)
    t = math.atan(sigma) * 2 / math.pi
    v_cond = dit_forward(p, cfg, x * c_in, t, f)
    v_uncond = dit_forward(p, cfg, x * c_in, t, torch.zeros_like(f))
    v = v_uncond + (v_cond - v_uncond) * cfg_scale
    return v * c_out + x * c_skip


def sample_dpmpp_3m_sde(
    p: Params,
    cfg: DiTConfig,
    f: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    cfg_scale: float,
    eta: float,
    s_noise: float = 1.0,
    step_noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DPM++ 3M SDE. noise: [io, T'] initial N(0,1); step_noise[i]: z for step i.

    Scalars (h, phi, ...) are Python floats, i.e. f64 on the host, as the doc asks.
    """
    s = [float(v) for v in sigmas]
    x = noise * s[0]
    d1 = d2 = None
    h1 = h2 = None
    h = None
    for i in range(len(s) - 1):
        denoised = denoise(p, cfg, x, s[i], f, cfg_scale)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            he = h * (eta + 1)
            x = math.exp(-he) * x + (-math.expm1(-he)) * denoised
            if h2 is not None:
                r0, r1 = h1 / h, h2 / h
                D0 = (denoised - d1) / r0
                D1 = (d1 - d2) / r1
                dd1 = D0 + (D0 - D1) * r0 / (r0 + r1)
                dd2 = (D0 - D1) / (r0 + r1)
                phi2 = math.expm1(-he) / he + 1
                phi3 = phi2 / he - 0.5
                x = x + phi2 * dd1 - phi3 * dd2
            elif h1 is not None:
                r = h1 / h
                D = (denoised - d1) / r
                phi2 = math.expm1(-he) / he + 1
                x = x + phi2 * D
            if eta != 0:
                z = step_noise[i].to(x.dtype)
                x = x + z * s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
        d2, d1 = d1, denoised
        h2, h1 = h1, h
    return x
