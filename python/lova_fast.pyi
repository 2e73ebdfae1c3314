"""LoVA video-to-audio inference (the lova-fast Rust engine, CPU and CUDA).

    import lova_fast
    pipeline = lova_fast.Pipeline("lova-fast.safetensors")   # from `lova-fast convert`
    result = pipeline.generate("clip.mp4", seed=1)
    result.write_wav("clip.wav")          # or result.audio: float32 [2, samples]
"""

import os
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

PathLike = Union[str, "os.PathLike[str]"]
Input = Union[PathLike, npt.NDArray[np.uint8], npt.NDArray[np.float32]]

class LovaError(Exception):
    """Base class of every error lova_fast raises."""

class InputError(LovaError, ValueError):
    """Bad input or arguments (same messages as `lova-fast infer`)."""

class DeviceError(LovaError, RuntimeError):
    """The device failed (CUDA could not start, a CUDA call failed, a batch failed)."""

class Cancelled(LovaError):
    """The generation was cancelled before it finished."""

class Result:
    """The result of one generation."""

    @property
    def audio(self) -> Optional[npt.NDArray[np.float32]]:
        """Stereo audio float32 [2, samples] in [-1, 1]; None when opened with vae=False."""
    @property
    def sample_rate(self) -> int:
        """Samples per second (44100)."""
    @property
    def seconds(self) -> float:
        """Audio length in seconds."""
    @property
    def frames(self) -> int:
        """Video frames (at the sample rate) CLIP encoded, or the features' rows."""
    @property
    def seed(self) -> int:
        """The noise seed: the one given, or the one drawn."""
    @property
    def steps(self) -> int:
        """Sampler steps run."""
    @property
    def latents(self) -> npt.NDArray[np.float32]:
        """The sampled latents float32 [64, T'] (what `lova-fast decode` reads)."""
    @property
    def features(self) -> npt.NDArray[np.float32]:
        """The CLIP features float32 [N, 768] the model was conditioned on."""
    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage (decode_s, clip_s, sampling_s, vae_s) and the sampler
        batch this input was part of (batch_requests, batch_latent_frames, batch_tflops)."""
    def write_wav(self, path: PathLike, *, float32: bool = False) -> None:
        """Writes the audio as a WAV file: 16-bit PCM as `lova-fast infer` writes, or 32-bit float."""
    def mux(self, video: PathLike, out: PathLike, *, float32: bool = False) -> None:
        """Writes `out`: `video` with this audio as its soundtrack (needs FFmpeg)."""

class Pipeline:
    """A LoVA model loaded on one device, ready to turn videos into audio.

    One generation runs at a time per pipeline; other threads wait without the GIL.
    """

    def __init__(
        self,
        weights: PathLike,
        device: str = "auto",
        threads: Optional[int] = None,
        *,
        clip: bool = True,
        vae: bool = True,
    ) -> None:
        """Opens an engine file (from `lova-fast convert`).

        device: "auto" (CUDA GPU 0 when usable, else the CPU), "cpu", "cuda" or "cuda:N".
        threads: CPU threads (process-wide, set once; default: all cores).
        clip: load CLIP (video and frame inputs need it). vae: load the VAE decoder.
        """
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: PathLike,
        clip_file: Optional[PathLike],
        config: Optional[PathLike] = None,
        device: str = "auto",
        threads: Optional[int] = None,
        *,
        vae: bool = True,
    ) -> "Pipeline":
        """Opens the original LoVA checkpoint with a CLIP checkpoint (converted while loading)."""
    @property
    def device(self) -> str:
        """The device in words."""
    @property
    def device_note(self) -> Optional[str]:
        """Why device="auto" runs on the CPU, or None."""
    @property
    def sample_rate(self) -> int: ...
    @property
    def fps(self) -> float:
        """The rate video frames are sampled at for CLIP (8)."""
    def generate(
        self,
        input: Input,
        *,
        seed: Optional[int] = None,
        steps: int = 150,
        cfg: float = 5.0,
        eta: float = 1.0,
        seconds: Optional[float] = None,
        fps: Optional[float] = None,
        sample_fps: Optional[float] = None,
        progress: Optional[Callable[[str, int, int], object]] = None,
    ) -> Result:
        """Generates the audio of one input.

        input: a video path, a features .safetensors path, a folder of frames (with fps),
        numpy uint8 [N, H, W, 3] RGB frames (with fps), or numpy float32 [N, 768] features.
        progress(stage, done, total), stage in "decode", "clip", "sampling", "vae", is
        called with the GIL held; an exception it raises cancels and is re-raised.
        Ctrl-C cancels within one sampler step (KeyboardInterrupt).
        """
    def generate_many(
        self,
        inputs: Sequence[Input],
        *,
        seed: Union[None, int, Sequence[Optional[int]]] = None,
        steps: int = 150,
        cfg: float = 5.0,
        eta: float = 1.0,
        seconds: Optional[float] = None,
        fps: Optional[float] = None,
        sample_fps: Optional[float] = None,
        progress: Optional[Callable[[int, str, int, int], object]] = None,
    ) -> List[Union[Result, LovaError]]:
        """Generates many inputs in one packed batch; per input a Result or its exception (returned)."""
