"""Generate the golden fixtures under tests/fixtures/ from lova_reference.py.

Run from the repository root:

    python tools/reference/make_fixtures.py

Deterministic: every random tensor comes from its own seeded torch.Generator,
so regenerating gives identical files (on the same torch version) and adding a
fixture does not shift the random streams of the others.

Weights are generated, rounded to their storage dtype, written, and read back;
the reference then computes in float64 from the values as stored, so the
engine's loader sees exactly what the reference used. Inputs are likewise
rounded to float32 before the reference sees them.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lova_reference as ref  # noqa: E402
import vae_reference as vae  # noqa: E402

REAL_CONFIG = "configs/lova-vl30.json"
FIXTURES = "tests/fixtures"
F64 = torch.float64

# Weights stored as float16 in the fixture checkpoints (key suffixes).
FP16_SUFFIXES = (
    "self_attn.to_qkv.weight",
    "self_attn.to_out.weight",
    "cross_attn.to_q.weight",
    "cross_attn.to_kv.weight",
    "cross_attn.to_out.weight",
    "ff.ff.0.proj.weight",
    "ff.ff.2.weight",
    "transformer.project_in.weight",
    "transformer.project_out.weight",
    "to_timestep_embed.0.weight",
    "to_timestep_embed.2.weight",
    "to_cond_embed.2.weight",
    "to_scale_shift_gate.1.weight",
    "transformer.pos_emb.emb.weight",
    "transformer.pos_emb_cond.emb.weight",
    "to_global_embed.0.weight",
    "to_global_embed.2.weight",
)
BF16_SUFFIXES = ("to_cond_embed.0.weight",)

# Sampler settings for the tiny-model runs.
SAMPLER = dict(steps=8, cfg_scale=5.0, sigma_min=0.3, sigma_max=500.0, rho=1.0, s_noise=1.0)
SAMPLER_FRAMES = 16


def storage_dtype(key: str) -> torch.dtype:
    if key.endswith(FP16_SUFFIXES):
        return torch.float16
    if key.endswith(BF16_SUFFIXES):
        return torch.bfloat16
    return torch.float32


def make_configs() -> None:
    with open(REAL_CONFIG) as fh:
        real = json.load(fh)
    tiny = copy.deepcopy(real)
    dc = tiny["model"]["diffusion"]["config"]
    dc.update(embed_dim=256, depth=2, num_heads=4, cond_token_dim=128, global_cond_dim=256)
    tiny["model"]["conditioning"]["cond_dim"] = 128
    # A tiny VAE decoder: 4 base channels (64 at the widest), but the real strides
    # and dilations; latents are scaled by 1.5 before decoding to exercise `scale`.
    tiny["model"]["pretransform"]["config"]["decoder"]["config"]["channels"] = 4
    tiny["model"]["pretransform"]["scale"] = 1.5
    # The adaLN variant is smaller still (2 query heads over 1 kv head, short
    # position tables) to keep the committed fixtures small; the tiny model
    # above is the one that exercises several kv heads and full 3000-row tables.
    adaln = copy.deepcopy(tiny)
    adc = adaln["model"]["diffusion"]["config"]
    adc.update(embed_dim=128, num_heads=2, cond_token_dim=64, global_cond_dim=128,
               abs_pos_emb_max_length=64, global_cond_type="adaLN")
    adaln["model"]["conditioning"]["cond_dim"] = 64
    for name, cfg in (("tiny", tiny), ("adaln", adaln)):
        os.makedirs(f"{FIXTURES}/{name}", exist_ok=True)
        with open(f"{FIXTURES}/{name}/model_config.json", "w") as fh:
            json.dump(cfg, fh, indent=4)
            fh.write("\n")


def random_param(key: str, shape, g: torch.Generator) -> torch.Tensor:
    """One parameter in float64 before rounding to its storage dtype."""
    if key.endswith("rotary_pos_emb.inv_freq"):
        k = torch.arange(shape[0], dtype=F64)
        return 10000.0 ** (-2 * k / ref.ROTARY_DIM)
    n = torch.randn(shape, generator=g, dtype=F64)
    if key.endswith(".gamma"):
        return 1 + 0.1 * n
    # Nonzero beta and biases on purpose: a loader that drops them must fail.
    if key.endswith((".beta", ".bias")):
        return 0.1 * n
    if key.endswith(("pos_emb.emb.weight", "pos_emb_cond.emb.weight", "timestep_features.weight")):
        return n
    fan_in = math.prod(shape[1:])
    scale = 0.5 if key.endswith("to_scale_shift_gate.1.weight") else 1.0
    return n / math.sqrt(fan_in) * scale


def random_vae(dec: dict, g: torch.Generator) -> dict:
    """A weight-normalised Oobleck decoder as the original checkpoint stores it (float32)."""
    out = {}
    for key, shape in vae.param_shapes(dec).items():
        if key.endswith(".weight_g"):
            continue  # set from weight_v below
        n = torch.randn(shape, generator=g, dtype=F64)
        if key.endswith(".weight_v"):
            v = n / math.sqrt(math.prod(shape[1:]))
            norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
            out[key] = v.float()
            # g near ||v|| / 2 (weight norm starts at ||v||; halved so that activations stay
            # O(1) through the residual stack, as in a trained decoder), perturbed so that the fold matters.
            out[key[: -len("weight_v")] + "weight_g"] = (0.5 * norm * (0.1 * torch.randn(norm.shape, generator=g,
                                                                                     dtype=F64)).exp()).float()
        elif key.endswith((".alpha", ".beta")):
            out[key] = (0.2 * n).float()  # log scale
        else:
            out[key] = (0.1 * n).float()
    return {k: v.contiguous() for k, v in out.items()}


def make_vae_cases(params: dict, model_config: dict, path: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    dec, scale = vae.decoder_config(model_config), vae.latent_scale(model_config)
    out = {}
    for prefix, T in (("a.", 5), ("b.", 1)):
        z = f32(torch.randn(dec["latent_dim"], T, generator=g, dtype=F64))
        audio = vae.vae_decode(params, dec, z.to(F64), scale)
        out[prefix + "latents"] = z
        out[prefix + "audio"] = f32(audio)
    save_file(out, path)
    return out


def make_checkpoint(cfg: ref.DiTConfig, path: str, seed: int, with_vae: dict | None = None) -> ref.Params:
    """Write a random checkpoint in the real key layout; return it as stored (float64)."""
    g = torch.Generator().manual_seed(seed)
    shapes = ref.param_shapes(cfg)
    E = cfg.embed_dim
    # Present in real checkpoints but unused by inference; the engine must ignore them.
    unused = {
        ref.PREFIX + "to_global_embed.0.weight": [E, cfg.global_cond_dim],
        ref.PREFIX + "to_global_embed.2.weight": [E, E],
        "pretransform.model.encoder.layers.0.bias": [16],
    }
    tensors = {}
    for key, shape in list(shapes.items()) + list(unused.items()):
        tensors[key] = random_param(key, shape, g).to(storage_dtype(key)).contiguous()
    if with_vae is not None:
        tensors.update(random_vae(with_vae, torch.Generator().manual_seed(seed + 100)))
    save_file(tensors, path)
    return ref.to_dtype(load_file(path), F64)


def f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


def make_dit_cases(cfg, params, path, cases, seed) -> dict:
    """cases: list of (prefix, T', N, t). Returns the tensors written."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, T, N, t in cases:
        x = f32(torch.randn(cfg.io_channels, T, generator=g, dtype=F64))
        feats = f32(torch.randn(N, cfg.cond_dim, generator=g, dtype=F64))
        t32 = torch.tensor([t], dtype=torch.float32)
        tt = float(t32[0])  # the reference uses the float32-rounded t
        v_cond = ref.dit_forward(params, cfg, x.to(F64), tt, feats.to(F64))
        v_uncond = ref.dit_forward(params, cfg, x.to(F64), tt, torch.zeros(N, cfg.cond_dim, dtype=F64))
        out.update({
            prefix + "x": x,
            prefix + "t": t32,
            prefix + "features": feats,
            prefix + "v_cond": f32(v_cond),
            prefix + "v_uncond": f32(v_uncond),
        })
    save_file(out, path, metadata={"cases": json.dumps([dict(prefix=c[0], T=c[1], N=c[2], t=c[3]) for c in cases])})
    return out


def make_sampler_fixtures(cfg, params, seed) -> dict:
    g = torch.Generator().manual_seed(seed)
    T = ref.latent_length(cfg, SAMPLER_FRAMES)
    assert T == 44, T
    d = f"{FIXTURES}/tiny"
    feats = f32(torch.randn(SAMPLER_FRAMES, cfg.cond_dim, generator=g, dtype=F64))
    noise = f32(torch.randn(cfg.io_channels, T, generator=g, dtype=F64))
    steps = SAMPLER["steps"]
    # The last step lands on sigma = 0 and draws no noise, hence steps - 1 entries.
    step_noise = f32(torch.randn(steps - 1, cfg.io_channels, T, generator=g, dtype=F64))
    save_file({"features": feats}, f"{d}/features.safetensors")
    save_file({"noise": noise}, f"{d}/init_noise.safetensors")

    sigmas = ref.polyexponential_sigmas(steps, SAMPLER["sigma_min"], SAMPLER["sigma_max"], SAMPLER["rho"])
    results = {"sigmas": sigmas}
    for eta in (0.0, 1.0):
        x = ref.sample_dpmpp_3m_sde(
            params, cfg, feats.to(F64), noise.to(F64), sigmas,
            cfg_scale=SAMPLER["cfg_scale"], eta=eta, s_noise=SAMPLER["s_noise"],
            step_noise=step_noise.to(F64) if eta else None,
        )
        tensors = {"sigmas": sigmas.contiguous(), "latents": f32(x)}
        if eta:
            tensors["step_noise"] = step_noise
        settings = dict(SAMPLER, eta=eta, frames=SAMPLER_FRAMES, latent_length=T, sampler="dpmpp-3m-sde",
                        noise_layout="x0 = noise * sigmas[0]; step_noise[i] is z at step i")
        # One metadata key: safetensors writes several in hash order, which
        # would make regenerated files differ byte-wise for no reason.
        meta = {"settings": json.dumps(settings, sort_keys=True)}
        save_file(tensors, f"{d}/sampler_eta{int(eta)}.safetensors", metadata=meta)
        results[f"latents_eta{int(eta)}"] = x
    return results


def describe(name: str, t: torch.Tensor) -> None:
    t = t.to(F64)
    finite = bool(torch.isfinite(t).all())
    print(f"  {name:28s} shape={list(t.shape)!s:14s} std={t.std().item():.4g} "
          f"max|.|={t.abs().max().item():.4g} finite={finite}")


def main() -> None:
    if not os.path.exists(REAL_CONFIG):
        sys.exit("run from the repository root (configs/lova-vl30.json not found)")
    torch.use_deterministic_algorithms(True)
    make_configs()
    tiny_cfg = ref.read_config(f"{FIXTURES}/tiny/model_config.json")
    adaln_cfg = ref.read_config(f"{FIXTURES}/adaln/model_config.json")

    with open(f"{FIXTURES}/tiny/model_config.json") as fh:
        tiny_json = json.load(fh)
    tiny_p = make_checkpoint(tiny_cfg, f"{FIXTURES}/tiny/checkpoint.safetensors", seed=1,
                             with_vae=vae.decoder_config(tiny_json))
    vae_cases = make_vae_cases(tiny_p, tiny_json, f"{FIXTURES}/tiny/vae_cases.safetensors", seed=6)
    adaln_p = make_checkpoint(adaln_cfg, f"{FIXTURES}/adaln/checkpoint.safetensors", seed=2)

    tiny_cases = make_dit_cases(tiny_cfg, tiny_p, f"{FIXTURES}/tiny/dit_cases.safetensors",
                                [("a.", 37, 11, 0.73), ("b.", 5, 3, 0.21)], seed=3)
    adaln_cases = make_dit_cases(adaln_cfg, adaln_p, f"{FIXTURES}/adaln/dit_cases.safetensors",
                                 [("a.", 23, 7, 0.4)], seed=4)
    sampler = make_sampler_fixtures(tiny_cfg, tiny_p, seed=5)

    print("magnitudes:")
    for tag, cases in (("tiny", tiny_cases), ("adaln", adaln_cases)):
        for k, v in cases.items():
            if "v_" in k:
                describe(f"{tag}/{k}", v)
    for k, v in vae_cases.items():
        describe(f"tiny/vae/{k}", v)
    for k in ("latents_eta0", "latents_eta1"):
        describe(f"tiny/{k}", sampler[k])
    print("  sigmas:", [f"{s:.6g}" for s in sampler["sigmas"].tolist()])

    import check_reference
    check_reference.main()


if __name__ == "__main__":
    main()
