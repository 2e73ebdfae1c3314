"""Plain-PyTorch reference for the CLIP ViT image tower (docs/lova-model.md section 3).

Written from the doc, not from OpenAI's `clip` package, so that the Rust engine
and this file are two independent readings of the same specification. Like
lova_reference.py it works on a dict of tensors keyed by checkpoint key in the
OpenAI layout (`visual.*`), without nn.Modules; `hugging_face_to_openai` reads
the other public layout into the same dict.

The patch embedding uses F.conv2d (the engine uses im2col + matmul), so the
two agree only if both read the conv the same way. Computation runs in the
dtype of the parameters; the fixtures use float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F

Params = Dict[str, torch.Tensor]

HEAD_DIM = 64  # heads = width // 64 in every CLIP ViT
LN_EPS = 1e-5
MLP_RATIO = 4


@dataclass
class ClipVisionConfig:
    width: int
    layers: int
    patch: int
    image_size: int
    output_dim: int

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def tokens(self) -> int:
        return self.grid ** 2 + 1


VIT_L14 = ClipVisionConfig(width=1024, layers=24, patch=14, image_size=224, output_dim=768)


def param_shapes(cfg: ClipVisionConfig) -> Dict[str, List[int]]:
    """Every image-tower tensor in the OpenAI layout (the table of section 3)."""
    W, M = cfg.width, MLP_RATIO * cfg.width
    shapes = {
        "visual.conv1.weight": [W, 3, cfg.patch, cfg.patch],
        "visual.class_embedding": [W],
        "visual.positional_embedding": [cfg.tokens, W],
        "visual.ln_pre.weight": [W],
        "visual.ln_pre.bias": [W],
    }
    for i in range(cfg.layers):
        p = f"visual.transformer.resblocks.{i}."
        shapes.update({
            p + "ln_1.weight": [W],
            p + "ln_1.bias": [W],
            p + "attn.in_proj_weight": [3 * W, W],
            p + "attn.in_proj_bias": [3 * W],
            p + "attn.out_proj.weight": [W, W],
            p + "attn.out_proj.bias": [W],
            p + "ln_2.weight": [W],
            p + "ln_2.bias": [W],
            p + "mlp.c_fc.weight": [M, W],
            p + "mlp.c_fc.bias": [M],
            p + "mlp.c_proj.weight": [W, M],
            p + "mlp.c_proj.bias": [W],
        })
    shapes.update({
        "visual.ln_post.weight": [W],
        "visual.ln_post.bias": [W],
        "visual.proj": [W, cfg.output_dim],
    })
    return shapes


def hugging_face_to_openai(hf: Params, layers: int) -> Params:
    """The image tower of a Hugging Face CLIP state dict under the OpenAI keys:
    q/k/v stacked into in_proj (q first), visual_projection.weight transposed."""
    e, v = "vision_model.embeddings.", "vision_model."
    out = {
        "visual.conv1.weight": hf[e + "patch_embedding.weight"],
        "visual.class_embedding": hf[e + "class_embedding"],
        "visual.positional_embedding": hf[e + "position_embedding.weight"],
        "visual.ln_pre.weight": hf[v + "pre_layrnorm.weight"],  # sic
        "visual.ln_pre.bias": hf[v + "pre_layrnorm.bias"],
        "visual.ln_post.weight": hf[v + "post_layernorm.weight"],
        "visual.ln_post.bias": hf[v + "post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].T.contiguous(),
    }
    for i in range(layers):
        h, o = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[o + f"attn.in_proj_{param}"] = torch.cat([hf[h + f"self_attn.{x}_proj.{param}"] for x in "qkv"])
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[o + f"{ours}.{param}"] = hf[h + f"{theirs}.{param}"]
    return out


def openai_to_hugging_face(p: Params, layers: int) -> Params:
    """The inverse of hugging_face_to_openai (to write the same weights in both layouts)."""
    e, v = "vision_model.embeddings.", "vision_model."
    out = {
        e + "patch_embedding.weight": p["visual.conv1.weight"],
        e + "class_embedding": p["visual.class_embedding"],
        e + "position_embedding.weight": p["visual.positional_embedding"],
        v + "pre_layrnorm.weight": p["visual.ln_pre.weight"],
        v + "pre_layrnorm.bias": p["visual.ln_pre.bias"],
        v + "post_layernorm.weight": p["visual.ln_post.weight"],
        v + "post_layernorm.bias": p["visual.ln_post.bias"],
        "visual_projection.weight": p["visual.proj"].T.contiguous(),
    }
    for i in range(layers):
        h, o = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            for x, part in zip("qkv", p[o + f"attn.in_proj_{param}"].chunk(3)):
                out[h + f"self_attn.{x}_proj.{param}"] = part.contiguous()
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[h + f"{theirs}.{param}"] = p[o + f"{ours}.{param}"]
    return out


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as nn.LayerNorm
    return (x - mean) / torch.sqrt(var + LN_EPS) * weight + bias


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def attention(x: torch.Tensor, in_w: torch.Tensor, in_b: torch.Tensor, out_w: torch.Tensor,
              out_b: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention over the tokens of one image, x [T, W]: q/k/v from the
    stacked in_proj (q rows first), heads of 64 columns each, no mask."""
    T, W = x.shape
    q, k, v = F.linear(x, in_w, in_b).split(W, dim=-1)
    q, k, v = (t.reshape(T, heads, HEAD_DIM).transpose(0, 1) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
    o = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(T, W)
    return F.linear(o, out_w, out_b)


def encode_image(p: Params, cfg: ClipVisionConfig, images: torch.Tensor) -> torch.Tensor:
    """Preprocessed images [n, 3, S, S] -> features [n, output_dim] (no L2 normalisation)."""
    n = images.shape[0]
    x = F.conv2d(images, p["visual.conv1.weight"], stride=cfg.patch)  # [n, W, grid, grid]
    x = x.flatten(2).transpose(1, 2)  # [n, grid^2, W], patches row-major over the grid
    cls = p["visual.class_embedding"].expand(n, 1, cfg.width)
    x = torch.cat([cls, x], dim=1) + p["visual.positional_embedding"]
    x = _layer_norm(x, p["visual.ln_pre.weight"], p["visual.ln_pre.bias"])
    feats = []
    for img in x:
        for i in range(cfg.layers):
            b = f"visual.transformer.resblocks.{i}."
            h = _layer_norm(img, p[b + "ln_1.weight"], p[b + "ln_1.bias"])
            img = img + attention(h, p[b + "attn.in_proj_weight"], p[b + "attn.in_proj_bias"],
                                  p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"], cfg.heads)
            h = _layer_norm(img, p[b + "ln_2.weight"], p[b + "ln_2.bias"])
            h = quick_gelu(F.linear(h, p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"]))
            img = img + F.linear(h, p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])
        cls_token = _layer_norm(img[0], p["visual.ln_post.weight"], p["visual.ln_post.bias"])
        feats.append(cls_token @ p["visual.proj"])
    return torch.stack(feats)
