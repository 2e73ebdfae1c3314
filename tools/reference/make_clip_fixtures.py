"""Generate the CLIP image-tower fixtures under tests/fixtures/clip/ from clip_reference.py.

Run from the repository root:

    python tools/reference/make_clip_fixtures.py

Writes a tiny random CLIP (width 128, 2 heads of 64, 2 layers, 224x224 input,
patch 14, output dim 128) twice, in the OpenAI and in the Hugging Face layout
(the same values, stored as float16), each with text-tower keys the engine must ignore,
and three random images with their features from the float64 reference.

Deterministic: every random tensor comes from a seeded torch.Generator, so a
second run gives byte-identical files (on the same torch version). Then it runs
the self-checks below; if Hugging Face `transformers` is importable, the
Hugging Face file is also run through its CLIPVisionModelWithProjection.
"""

from __future__ import annotations

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_reference as ref  # noqa: E402

OUT = "tests/fixtures/clip"
F64 = torch.float64
# Output 128 = the tiny DiT's cond_token_dim, so the tiny CLIP and DiT form a pipeline.
CFG = ref.ClipVisionConfig(width=128, layers=2, patch=14, image_size=224, output_dim=128)
IMAGES = 3

# Text-tower tensors of a full CLIP checkpoint (small shapes): the engine must never
# read them. The OpenAI ones include names that differ from vision keys only by the
# `visual.` prefix, and both text towers have more blocks than the image tower.
TEXT_WIDTH = 32
OPENAI_TEXT = {
    "positional_embedding": [77, TEXT_WIDTH],
    "token_embedding.weight": [100, TEXT_WIDTH],
    "transformer.resblocks.0.attn.in_proj_weight": [3 * TEXT_WIDTH, TEXT_WIDTH],
    "transformer.resblocks.1.ln_1.weight": [TEXT_WIDTH],
    "transformer.resblocks.2.ln_1.weight": [TEXT_WIDTH],
    "ln_final.weight": [TEXT_WIDTH],
    "text_projection": [TEXT_WIDTH, CFG.output_dim],
    "logit_scale": [],
}
HF_TEXT = {
    "text_model.embeddings.token_embedding.weight": [100, TEXT_WIDTH],
    "text_model.encoder.layers.0.self_attn.q_proj.weight": [TEXT_WIDTH, TEXT_WIDTH],
    "text_model.encoder.layers.2.layer_norm1.weight": [TEXT_WIDTH],
    "text_model.final_layer_norm.weight": [TEXT_WIDTH],
    "text_projection.weight": [CFG.output_dim, TEXT_WIDTH],
    "logit_scale": [],
}


def random_param(key: str, shape, g: torch.Generator) -> torch.Tensor:
    """One parameter in float64, scaled like CLIP's own initialisation."""
    n = torch.randn(shape, generator=g, dtype=F64)
    if key.endswith(("ln_pre.weight", "ln_post.weight", "ln_1.weight", "ln_2.weight")):
        return 1 + 0.1 * n
    # Nonzero LN biases and linear biases on purpose: a loader that drops them must fail.
    if key.endswith((".bias", "in_proj_bias")):
        return 0.1 * n
    if key.endswith(("class_embedding", "positional_embedding", "visual.proj")):
        return n * CFG.width ** -0.5
    return n / math.sqrt(math.prod(shape[1:]))


def make_weights(seed: int) -> ref.Params:
    g = torch.Generator().manual_seed(seed)
    # Stored as float16 to keep the committed fixtures small (~3 MB); the reference
    # reads the files back, so it computes with exactly the stored values.
    return {k: random_param(k, s, g).to(torch.float16) for k, s in ref.param_shapes(CFG).items()}


def text_tensors(shapes, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=F64).to(torch.float16) for k, s in shapes.items()}


def check_attention_is_torch_multihead(p: ref.Params) -> None:
    """OpenAI's blocks use nn.MultiheadAttention: our q/k/v split and head layout must match it."""
    g = torch.Generator().manual_seed(99)
    x = torch.randn(CFG.tokens, CFG.width, generator=g, dtype=F64)
    b = "visual.transformer.resblocks.0."
    w = {k: p[b + k].to(F64) for k in ("attn.in_proj_weight", "attn.in_proj_bias",
                                        "attn.out_proj.weight", "attn.out_proj.bias")}
    ours = ref.attention(x, w["attn.in_proj_weight"], w["attn.in_proj_bias"],
                         w["attn.out_proj.weight"], w["attn.out_proj.bias"], CFG.heads)
    xb = x[:, None, :]  # [T, batch 1, W]
    theirs, _ = F.multi_head_attention_forward(
        xb, xb, xb, CFG.width, CFG.heads, w["attn.in_proj_weight"], w["attn.in_proj_bias"],
        None, None, False, 0.0, w["attn.out_proj.weight"], w["attn.out_proj.bias"],
        training=False, need_weights=False)
    err = ((ours - theirs[:, 0]).norm() / theirs.norm()).item()
    print(f"  attention vs F.multi_head_attention_forward: rel L2 {err:.2e}")
    assert err < 1e-12, err


def check_with_transformers(hf_path: str, images: torch.Tensor, features: torch.Tensor) -> None:
    """The Hugging Face file through transformers' own CLIP model (an independent implementation)."""
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError:
        print("  transformers: not installed, cross-check skipped")
        return
    c = CLIPVisionConfig(hidden_size=CFG.width, intermediate_size=ref.MLP_RATIO * CFG.width,
                         num_hidden_layers=CFG.layers, num_attention_heads=CFG.heads,
                         image_size=CFG.image_size, patch_size=CFG.patch, projection_dim=CFG.output_dim,
                         hidden_act="quick_gelu", layer_norm_eps=ref.LN_EPS, attn_implementation="eager")
    model = CLIPVisionModelWithProjection(c).to(F64).eval()
    sd = {k: v for k, v in load_file(hf_path).items() if not k.startswith("text_") and k != "logit_scale"}
    sd = {k: v.to(F64) if v.is_floating_point() else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing, missing
    assert set(unexpected) <= {"vision_model.embeddings.position_ids"}, unexpected
    with torch.no_grad():
        theirs = model(pixel_values=images.to(F64)).image_embeds
    err = ((theirs - features).norm() / features.norm()).item()
    print(f"  transformers CLIPVisionModelWithProjection on hf.safetensors vs reference: rel L2 {err:.2e}")
    # Not 1e-15: transformers' eager attention takes its softmax in float32.
    assert err < 1e-6, err


def main() -> None:
    if not os.path.isdir("tools/reference"):
        sys.exit("run from the repository root")
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)

    weights = make_weights(seed=11)
    openai = dict(weights, **text_tensors(OPENAI_TEXT, seed=12))
    save_file(openai, f"{OUT}/openai.safetensors")
    hf = ref.openai_to_hugging_face(weights, CFG.layers)
    hf.update(text_tensors(HF_TEXT, seed=13))
    # Older transformers checkpoints store this integer buffer; a loader must not trip on it.
    hf["vision_model.embeddings.position_ids"] = torch.arange(CFG.tokens, dtype=torch.int64)[None]
    save_file(hf, f"{OUT}/hf.safetensors")

    # The reference reads the files back, so it sees exactly what the engine loads.
    p = {k: v.to(F64) for k, v in load_file(f"{OUT}/openai.safetensors").items() if k.startswith("visual.")}
    p_hf = ref.hugging_face_to_openai(load_file(f"{OUT}/hf.safetensors"), CFG.layers)
    assert set(p_hf) == set(p) == set(ref.param_shapes(CFG))
    assert all(torch.equal(p_hf[k].to(F64), p[k]) for k in p), "the two layouts hold different weights"

    g = torch.Generator().manual_seed(14)
    images = torch.randn(IMAGES, 3, CFG.image_size, CFG.image_size, generator=g, dtype=F64).to(torch.float16)
    features = ref.encode_image(p, CFG, images.to(F64))
    config = dict(width=CFG.width, layers=CFG.layers, heads=CFG.heads, patch=CFG.patch,
                  image_size=CFG.image_size, output_dim=CFG.output_dim)
    save_file({"images": images.contiguous(), "features": features.to(torch.float32).contiguous()},
              f"{OUT}/cases.safetensors", metadata={"config": json.dumps(config, sort_keys=True)})

    print("magnitudes:")
    print(f"  features shape={list(features.shape)} std={features.std().item():.4g} "
          f"max|.|={features.abs().max().item():.4g}")
    for name in ("openai", "hf", "cases"):
        print(f"  {name}.safetensors: {os.path.getsize(f'{OUT}/{name}.safetensors') / 1e6:.2f} MB")

    print("self-checks:")
    check_attention_is_torch_multihead(p)
    f32 = ref.encode_image({k: v.to(torch.float32) for k, v in p.items()}, CFG, images.to(torch.float32)).to(F64)
    err = ((f32 - features).norm() / features.norm()).item()
    print(f"  float32 reference vs float64: rel L2 {err:.2e} (the engine is allowed 1e-4)")
    assert err < 1e-5, err
    spread = min(((features[i] - features[j]).norm() / features[j].norm()).item()
                 for i in range(IMAGES) for j in range(IMAGES) if i != j)
    print(f"  smallest rel L2 distance between two images' features: {spread:.3f}")
    assert spread > 0.1, spread
    check_with_transformers(f"{OUT}/hf.safetensors", images, features)
    print("ok")


if __name__ == "__main__":
    main()
