"""PyTorch reference of the Oobleck VAE decoder, written from lova-model.md section 6.

Works on a dict of checkpoint tensors keyed as the original LoVA checkpoint
stores them (`pretransform.model.decoder.layers.*`, weight-normalised convs as
`weight_g`/`weight_v` or `parametrizations.weight.original0`/`original1`).
Computes in the dtype of the tensors it is given (float64 for fixtures).
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F

VAE_PREFIX = "pretransform.model.decoder.layers."


def decoder_config(model_config: dict) -> dict:
    return model_config["model"]["pretransform"]["config"]["decoder"]["config"]


def latent_scale(model_config: dict) -> float:
    return float(model_config["model"]["pretransform"].get("scale", 1.0))


def _blocks(dec: dict):
    """(in, out, stride) of the decoder blocks layers.1 .. layers.N, in order."""
    C = dec["channels"]
    mults = [1] + list(dec["c_mults"])
    strides = dec["strides"]
    return [(mults[i] * C, mults[i - 1] * C, strides[i - 1]) for i in range(len(mults) - 1, 0, -1)]


def conv_shapes(dec: dict) -> Dict[str, tuple]:
    """Every weight-normalised conv: key prefix -> (kind, weight shape)."""
    C, mults = dec["channels"], [1] + list(dec["c_mults"])
    out = {"0": ("conv", [mults[-1] * C, dec["latent_dim"], 7])}
    for b, (cin, cout, s) in enumerate(_blocks(dec), start=1):
        out[f"{b}.layers.1"] = ("convT", [cin, cout, 2 * s])
        for j in (2, 3, 4):
            out[f"{b}.layers.{j}.layers.1"] = ("conv", [cout, cout, 7])
            out[f"{b}.layers.{j}.layers.3"] = ("conv", [cout, cout, 1])
    out[str(len(mults) + 1)] = ("conv", [dec["out_channels"], C * mults[0], 7])
    return out


def param_shapes(dec: dict) -> Dict[str, List[int]]:
    """Every decoder key (weight_g/weight_v form) with its shape."""
    C, mults = dec["channels"], [1] + list(dec["c_mults"])
    last = str(len(mults) + 1)
    s: Dict[str, List[int]] = {}
    for name, (kind, shape) in conv_shapes(dec).items():
        s[VAE_PREFIX + name + ".weight_v"] = list(shape)
        s[VAE_PREFIX + name + ".weight_g"] = [shape[0], 1, 1]
        if name != last:  # the final conv has no bias
            s[VAE_PREFIX + name + ".bias"] = [shape[1] if kind == "convT" else shape[0]]
    for b, (cin, cout, _) in enumerate(_blocks(dec), start=1):
        for key, ch in [(f"{b}.layers.0", cin)] + [(f"{b}.layers.{j}.layers.{k}", cout) for j in (2, 3, 4) for k in (0, 2)]:
            s[VAE_PREFIX + key + ".alpha"] = [ch]
            s[VAE_PREFIX + key + ".beta"] = [ch]
    s[VAE_PREFIX + str(len(mults)) + ".alpha"] = [C * mults[0]]
    s[VAE_PREFIX + str(len(mults)) + ".beta"] = [C * mults[0]]
    return s


def folded_weight(p: dict, name: str) -> torch.Tensor:
    """weight = g * v / ||v||, the norm over every dim but dim 0."""
    key = VAE_PREFIX + name
    if key + ".weight_g" in p:
        g, v = p[key + ".weight_g"], p[key + ".weight_v"]
    else:
        g, v = p[key + ".parametrizations.weight.original0"], p[key + ".parametrizations.weight.original1"]
    return g * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)


def snake(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """SnakeBeta with log-scale parameters, x [C, L]."""
    a = p[VAE_PREFIX + name + ".alpha"].exp()[:, None]
    b = p[VAE_PREFIX + name + ".beta"].exp()[:, None]
    return x + 1.0 / (b + 1e-9) * torch.sin(a * x) ** 2


def _conv(p, name, x, dilation=1, bias=True):
    w = folded_weight(p, name)
    k = w.shape[-1]
    b = p[VAE_PREFIX + name + ".bias"] if bias else None
    return F.conv1d(x[None], w, b, padding=dilation * (k - 1) // 2, dilation=dilation)[0]


def vae_decode(p: dict, dec: dict, z: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Latents z [latent_dim, T'] -> audio [out_channels, 2048 T']."""
    x = _conv(p, "0", z * scale)
    blocks = _blocks(dec)
    for b, (_, _, s) in enumerate(blocks, start=1):
        x = snake(p, f"{b}.layers.0", x)
        w = folded_weight(p, f"{b}.layers.1")
        x = F.conv_transpose1d(x[None], w, p[VAE_PREFIX + f"{b}.layers.1.bias"], stride=s,
                               padding=math.ceil(s / 2))[0]
        for j, d in ((2, 1), (3, 3), (4, 9)):
            u = f"{b}.layers.{j}.layers"
            y = _conv(p, f"{u}.1", snake(p, f"{u}.0", x), dilation=d)
            x = x + _conv(p, f"{u}.3", snake(p, f"{u}.2", y))
    n = len(blocks) + 1
    x = snake(p, str(n), x)
    return _conv(p, str(n + 1), x, bias=False)
