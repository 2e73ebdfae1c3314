"""CLIP preprocessing fixtures: what Pillow + torchvision make of a few images.

For each size below, a synthetic RGB image (the integer pattern `pattern`, which
tests/preprocess_reference.rs recomputes, so no input is committed) is resized
with Pillow's bicubic so that its shorter side is 224 (the longer side
floor(224 * long / short), as torchvision's Resize computes it), centre-cropped
to 224 x 224 at round((W - 224) / 2), round((H - 224) / 2) (Python's round,
torchvision's CenterCrop) and saved as PNG (lossless) under
tests/fixtures/preprocess/.

    pip install pillow numpy && python tools/reference/make_preprocess_fixtures.py
"""
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 224
# (width, height): 16:9 shrink, odd sizes, upscaling from small images in both
# orientations, and one axis already at 224 (Pillow skips that pass).
CASES = [(640, 360), (321, 241), (48, 64), (100, 37), (224, 300), (257, 224)]
OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "preprocess"


def pattern(width: int, height: int) -> np.ndarray:
    """[H, W, 3] uint8: smooth gradients, a sharp diagonal edge and a checker."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * 255) // max(width - 1, 1)
    g = (y * 255) // max(height - 1, 1)
    b = np.where((x + 2 * y) % 23 < 11, 230, 20)
    b = np.where(((x // 5) + (y // 3)) % 2 == 0, b, (x * y) % 256)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def preprocess(image: Image.Image) -> Image.Image:
    w, h = image.size
    if w <= h:
        size = (SIZE, SIZE * h // w)
    else:
        size = (SIZE * w // h, SIZE)
    resized = image.resize(size, Image.BICUBIC)
    left = int(round((size[0] - SIZE) / 2.0))
    top = int(round((size[1] - SIZE) / 2.0))
    return resized.crop((left, top, left + SIZE, top + SIZE))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for w, h in CASES:
        out = preprocess(Image.fromarray(pattern(w, h), "RGB"))
        out.save(OUT / f"{w}x{h}.png", optimize=True)
        print(f"{w}x{h} -> {OUT / f'{w}x{h}.png'}")


if __name__ == "__main__":
    main()
