"""lova_fast on the tiny model: the same audio as `lova-fast infer`, every input
kind, batches with failing members, progress, cancellation and bad arguments."""

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import lova_fast
from conftest import FIXTURES, STEPS, decode_video, infer, infer_error, needs_ffmpeg, read_safetensors

FEATURES = FIXTURES / "tiny" / "features.safetensors"
VIDEO = FIXTURES / "video" / "h264_25fps.mp4"


def test_features_file_gives_the_cli_wav_bytes(pipeline, cli, engine, tmp_path):
    result = pipeline.generate(str(FEATURES), seed=7, steps=STEPS)
    result.write_wav(tmp_path / "py.wav")
    cli_wav = infer(cli, engine, FEATURES, tmp_path / "cli.wav", "--seed", "7", "--steps", str(STEPS))
    assert (tmp_path / "py.wav").read_bytes() == cli_wav

    features = read_safetensors(FEATURES)["features"]
    assert result.audio.dtype == np.float32
    assert result.audio.shape == (2, round(features.shape[0] / 8 * 44100))
    assert result.sample_rate == 44100 and result.seed == 7 and result.steps == STEPS
    assert np.array_equal(result.features, features)
    assert result.latents.dtype == np.float32 and result.latents.shape[0] == 64
    assert set(result.timings) >= {"decode_s", "clip_s", "sampling_s", "vae_s"}
    assert result.timings["batch_requests"] == 1


def test_float_wav_matches_the_cli(pipeline, cli, engine, tmp_path):
    result = pipeline.generate(FEATURES, seed=2, steps=STEPS, cfg=3.0, eta=0.5)
    result.write_wav(tmp_path / "py.wav", float32=True)
    args = ["--seed", "2", "--steps", str(STEPS), "--cfg", "3", "--eta", "0.5", "--float"]
    assert (tmp_path / "py.wav").read_bytes() == infer(cli, engine, FEATURES, tmp_path / "cli.wav", *args)


def test_features_array_equals_the_features_file(pipeline):
    features = read_safetensors(FEATURES)["features"]
    from_file = pipeline.generate(FEATURES, seed=3, steps=STEPS)
    # Fortran order and a strided view of the same values must read the same.
    fortran = np.asfortranarray(features)
    strided = np.repeat(features, 2, axis=1)[:, ::2]
    for array in (features, fortran, strided):
        from_array = pipeline.generate(array, seed=3, steps=STEPS)
        assert np.array_equal(from_array.audio, from_file.audio)


@needs_ffmpeg
def test_video_gives_the_cli_wav_bytes(pipeline, cli, engine, tmp_path):
    result = pipeline.generate(VIDEO, seed=5, steps=STEPS)
    result.write_wav(tmp_path / "py.wav")
    cli_wav = infer(cli, engine, VIDEO, tmp_path / "cli.wav", "--seed", "5", "--steps", str(STEPS))
    assert (tmp_path / "py.wav").read_bytes() == cli_wav
    assert result.audio.shape == (2, 4 * 44100)


@needs_ffmpeg
def test_numpy_frames_equal_the_video_and_an_image_folder(pipeline, tmp_path):
    frames = decode_video(VIDEO)
    assert frames.shape == (100, 48, 64, 3)
    assert np.array_equal(pipeline.generate(np.asfortranarray(frames), fps=25, seed=4, steps=2).features,
                          pipeline.generate(frames, fps=25, seed=4, steps=2).features)
    from_video = pipeline.generate(VIDEO, seed=4, steps=STEPS)
    from_frames = pipeline.generate(frames, fps=25, seed=4, steps=STEPS)
    assert np.array_equal(from_frames.audio, from_video.audio)
    assert np.array_equal(from_frames.features, from_video.features)

    folder = tmp_path / "frames"
    folder.mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(VIDEO), "-vsync", "passthrough",
                    str(folder / "%03d.png")], check=True)
    from_folder = pipeline.generate(folder, fps=25, seed=4, steps=STEPS)
    assert np.array_equal(from_folder.audio, from_frames.audio)


@needs_ffmpeg
def test_mux_writes_the_video_with_the_audio(pipeline, tmp_path):
    result = pipeline.generate(VIDEO, seed=1, steps=2)
    out = tmp_path / "with audio.mp4"
    result.mux(VIDEO, out)
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
                            str(out)], check=True, capture_output=True, text=True).stdout.split()
    assert sorted(probe) == ["audio", "video"]


def test_generate_many_broken_members_fail_alone(pipeline, tmp_path):
    features = read_safetensors(FEATURES)["features"]
    nan = features.copy()
    nan[3, 5] = np.nan
    inputs = [
        FEATURES,
        nan,
        str(tmp_path / "no such video.mp4"),
        np.zeros((4, 7), dtype=np.float64),
        features[:9],
    ]
    results = pipeline.generate_many(inputs, seed=[1, 2, 3, 4, 5], steps=STEPS)
    assert len(results) == 5
    assert isinstance(results[0], lova_fast.Result) and isinstance(results[4], lova_fast.Result)
    for broken in results[1:4]:
        assert isinstance(broken, lova_fast.InputError), broken
        assert isinstance(broken, ValueError) and isinstance(broken, lova_fast.LovaError)
    assert "non-finite" in str(results[1]) and "index" in str(results[1])
    assert "no such video.mp4" in str(results[2])
    assert "float64" in str(results[3])
    # Sampled together, each gets the bits it gets alone (CPU).
    assert np.array_equal(results[0].audio, pipeline.generate(FEATURES, seed=1, steps=STEPS).audio)
    assert np.array_equal(results[4].audio, pipeline.generate(features[:9], seed=5, steps=STEPS).audio)
    assert results[0].timings["batch_requests"] == 2


def test_generate_many_one_seed_for_all_and_seed_count_checked(pipeline):
    features = read_safetensors(FEATURES)["features"]
    a, b = pipeline.generate_many([features, features[:8]], seed=9, steps=2)
    assert a.seed == b.seed == 9
    with pytest.raises(lova_fast.InputError, match="2 seeds for 3 inputs"):
        pipeline.generate_many([features] * 3, seed=[1, 2], steps=2)
    drawn = pipeline.generate_many([features, features], steps=2)
    assert all(isinstance(r.seed, int) for r in drawn)


def test_progress_callback_reports_every_step_with_the_gil(pipeline):
    events = []
    pipeline.generate(FEATURES, seed=1, steps=STEPS, progress=lambda *e: events.append(e))
    sampling = [e for e in events if e[0] == "sampling"]
    assert sampling == [("sampling", i, STEPS) for i in range(1, STEPS + 1)]
    stages = [e[0] for e in events]
    assert stages.index("sampling") < stages.index("vae")
    assert events[-1][0] == "vae" and events[-1][1] == events[-1][2]

    many = []
    features = read_safetensors(FEATURES)["features"]
    pipeline.generate_many([features, "missing.mp4", features[:8]], seed=1, steps=2,
                           progress=lambda *e: many.append(e))
    steps_seen = {(i, done) for i, stage, done, _ in many if stage == "sampling"}
    # The indices are the inputs' positions (1 failed before sampling).
    assert steps_seen == {(0, 1), (0, 2), (2, 1), (2, 2)}


def test_an_exception_in_progress_cancels_and_is_raised(pipeline):
    seen = []

    def progress(stage, done, total):
        seen.append((stage, done))
        if stage == "sampling" and done == 2:
            raise OSError("stop here")

    with pytest.raises(OSError, match="stop here"):
        pipeline.generate(FEATURES, seed=1, steps=50, progress=progress)
    assert seen[-1] == ("sampling", 2)
    # The pipeline is still usable.
    assert pipeline.generate(FEATURES, seed=1, steps=2).audio is not None


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler (KeyboardInterrupt), whatever this process
    inherited: a shell starts background jobs with SIGINT ignored, and Python
    then leaves it ignored, so Ctrl-C could never reach the pipeline."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_cancels_within_one_step(pipeline, ctrl_c_raises):
    seen = []

    def progress(stage, done, total):
        seen.append((stage, done))
        if stage == "sampling" and done == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        pipeline.generate(FEATURES, seed=1, steps=500, progress=progress)
    assert [d for s, d in seen if s == "sampling"][-1] <= 4


def test_ctrl_c_without_a_callback_cancels(pipeline, ctrl_c_raises):
    # Long enough that finishing would show: 5000 steps of the tiny model.
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.generate(FEATURES, seed=1, steps=5000)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 5.0


def test_the_gil_is_released_while_generating(pipeline):
    done = threading.Event()
    thread = threading.Thread(target=lambda: (pipeline.generate(FEATURES, seed=1, steps=20), done.set()))
    ticks = 0
    thread.start()
    while not done.is_set() and thread.is_alive():
        ticks += 1
        time.sleep(0.001)
    thread.join()
    assert done.is_set()
    assert ticks > 20, "the main thread could not run while the other generated"


def test_bad_arguments_raise_the_cli_messages(pipeline, cli, engine, tmp_path):
    missing = tmp_path / "no such video.mp4"
    with pytest.raises(lova_fast.InputError) as info:
        pipeline.generate(missing, seed=1, steps=2)
    assert str(info.value) in infer_error(cli, engine, missing, "--seed", "1", "--steps", "2")

    with pytest.raises(ValueError) as info:
        pipeline.generate(FEATURES, steps=0)
    assert str(info.value).removeprefix("invalid input: ") in infer_error(cli, engine, FEATURES, "--steps", "0")

    with pytest.raises(lova_fast.InputError, match=r"features have shape \[5, 100\], expected \[N, 128\]"):
        pipeline.generate(np.zeros((5, 100), dtype=np.float32))
    with pytest.raises(lova_fast.InputError, match="give its frame rate with fps="):
        pipeline.generate(tmp_path)
    with pytest.raises(lova_fast.InputError, match="need their frame rate"):
        pipeline.generate(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(lova_fast.InputError, match=r"expected \[N, H, W, 3\]"):
        pipeline.generate(np.zeros((2, 8, 8, 4), dtype=np.uint8), fps=8)
    with pytest.raises(lova_fast.InputError, match="has its own"):
        pipeline.generate(VIDEO, fps=25)
    with pytest.raises(lova_fast.InputError, match="input must be a path"):
        pipeline.generate(42)
    with pytest.raises(lova_fast.InputError, match="cfg must be a number from"):
        pipeline.generate(FEATURES, cfg=float("nan"))
    with pytest.raises(TypeError):
        pipeline.generate(FEATURES, 1)  # settings are keyword-only


def test_bad_pipelines(engine, tmp_path):
    with pytest.raises(lova_fast.InputError, match="unknown device `tpu`"):
        lova_fast.Pipeline(engine, device="tpu")
    with pytest.raises(lova_fast.InputError, match="nothing.safetensors"):
        lova_fast.Pipeline(tmp_path / "nothing.safetensors", device="cpu")
    with pytest.raises(lova_fast.InputError, match="not a lova-fast engine file"):
        lova_fast.Pipeline(FIXTURES / "tiny" / "checkpoint.safetensors", device="cpu")
    with pytest.raises(lova_fast.InputError, match="threads must be at least 1"):
        lova_fast.Pipeline(engine, device="cpu", threads=0)


def test_original_checkpoint_gives_the_cli_wav_bytes(cli, tmp_path):
    checkpoint = FIXTURES / "tiny" / "checkpoint.safetensors"
    config = FIXTURES / "tiny" / "model_config.json"
    original = lova_fast.Pipeline.from_checkpoint(checkpoint, None, config=config, device="cpu")
    original.generate(FEATURES, seed=8, steps=STEPS).write_wav(tmp_path / "py.wav")
    subprocess.run([str(cli), "infer", "--checkpoint", str(checkpoint), "--config", str(config), "--device", "cpu",
                    "--quiet", "--seed", "8", "--steps", str(STEPS), str(FEATURES), "-o", str(tmp_path / "cli.wav")],
                   check=True, capture_output=True)
    assert (tmp_path / "py.wav").read_bytes() == (tmp_path / "cli.wav").read_bytes()
    with pytest.raises(lova_fast.InputError, match="CLIP"):
        original.generate(VIDEO, seed=1, steps=2)


def test_help_and_stubs_document_the_api():
    assert "generate_many" in (lova_fast.Pipeline.__doc__ or "") or lova_fast.Pipeline.generate_many.__doc__
    assert "progress" in lova_fast.Pipeline.generate.__doc__
    assert issubclass(lova_fast.DeviceError, RuntimeError) and issubclass(lova_fast.DeviceError, lova_fast.LovaError)
    assert issubclass(lova_fast.InputError, ValueError)
