"""Write a full-size LoVA checkpoint with random weights in the original layout
(fp32, `model.model.*` DiT and weight-normalised `pretransform.model.decoder.*`),
about 4.8 GB, for testing `lova-fast convert` / `info` at the real size:

    python tools/reference/make_full_size_checkpoint.py /tmp/lova-full.safetensors [/tmp/clip-full.safetensors]

The optional second file is a random CLIP ViT-L/14 image tower (OpenAI layout, fp32, 1.2 GB).

Not used by the tests (too big to commit); values are small random numbers.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_reference as clip_ref  # noqa: E402
import lova_reference as ref  # noqa: E402
import vae_reference as vae  # noqa: E402


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "lova-full.safetensors"
    cfg = ref.read_config("configs/lova-vl30.json")
    with open("configs/lova-vl30.json") as fh:
        dec = vae.decoder_config(json.load(fh))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for key, shape in ref.param_shapes(cfg).items():
        tensors[key] = torch.randn(shape, generator=g) * 0.02
    for key, shape in vae.param_shapes(dec).items():
        tensors[key] = torch.randn(shape, generator=g) * 0.02 + (1.0 if key.endswith("weight_g") else 0.0)
    n = sum(t.numel() for t in tensors.values())
    print(f"{len(tensors)} tensors, {n / 1e9:.3f} B parameters -> {out}")
    save_file(tensors, out)
    if len(sys.argv) > 2:
        cfg = clip_ref.ClipVisionConfig(width=1024, layers=24, patch=14, image_size=224, output_dim=768)
        clip = {k: torch.randn(s, generator=g) * 0.02 for k, s in clip_ref.param_shapes(cfg).items()}
        print(f"CLIP: {sum(t.numel() for t in clip.values()) / 1e6:.1f} M parameters -> {sys.argv[2]}")
        save_file(clip, sys.argv[2])


if __name__ == "__main__":
    main()
