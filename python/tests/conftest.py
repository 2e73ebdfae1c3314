"""Fixtures shared by the tests: the tiny model as an engine file, and the
`lova-fast` binary of this checkout to compare with (`lova-fast infer`)."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
# Few steps: the tests compare bits, not audio quality.
STEPS = 4


def lova_fast_binary() -> Path:
    """The CLI of this checkout (LOVA_FAST_BIN, else built with cargo)."""
    given = os.environ.get("LOVA_FAST_BIN")
    if given:
        return Path(given)
    subprocess.run(["cargo", "build", "--quiet", "--bin", "lova-fast"], cwd=ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "lova-fast"


@pytest.fixture(scope="session")
def cli() -> Path:
    return lova_fast_binary()


@pytest.fixture(scope="session")
def engine(cli, tmp_path_factory) -> Path:
    """The tiny model with its CLIP tower, converted to an engine file."""
    out = tmp_path_factory.mktemp("engine") / "tiny.safetensors"
    subprocess.run(
        [
            str(cli), "convert",
            "--checkpoint", str(FIXTURES / "tiny" / "checkpoint.safetensors"),
            "--config", str(FIXTURES / "tiny" / "model_config.json"),
            "--clip", str(FIXTURES / "clip" / "openai.safetensors"),
            "-o", str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def pipeline(engine):
    import lova_fast

    return lova_fast.Pipeline(str(engine), device="cpu")


def infer(cli: Path, engine: Path, input, out: Path, *args: str) -> bytes:
    """`lova-fast infer` of one input; returns the WAV's bytes."""
    subprocess.run(
        [str(cli), "infer", "--weights", str(engine), "--device", "cpu", "--quiet", str(input), "-o", str(out), *args],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def infer_error(cli: Path, engine: Path, input, *args: str) -> str:
    """`lova-fast infer` that must fail; returns what it printed."""
    done = subprocess.run(
        [str(cli), "infer", "--weights", str(engine), "--device", "cpu", str(input), *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0, done
    return done.stderr


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="FFmpeg is not installed"
)


def decode_video(path: Path) -> np.ndarray:
    """Every frame of a video as RGB uint8 [N, H, W, 3], decoded as lova-fast does (FFmpeg, rgb24)."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
         "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
         "-vsync", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, stream["height"], stream["width"], 3)


def read_safetensors(path: Path) -> dict:
    """The F32 tensors of a safetensors file (no dependency on the safetensors package)."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"]).copy()
    return tensors
