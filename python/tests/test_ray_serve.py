"""The Ray Serve example, locally on the CPU: 2 replicas of the tiny model
behind one HTTP endpoint, 16 concurrent requests of mixed lengths. Skipped
where Ray Serve is not installed (`pip install "ray[serve]"`)."""

import concurrent.futures
import json
import os
import socket
import struct
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, STEPS, infer, read_safetensors

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_features(path: Path, features: np.ndarray) -> None:
    """A features .safetensors file as `infer --save-features` writes it (one F32 tensor)."""
    data = np.ascontiguousarray(features, dtype="<f4").tobytes()
    header = json.dumps({"features": {"dtype": "F32", "shape": list(features.shape),
                                      "data_offsets": [0, len(data)]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(engine):
    # The replicas (worker processes) import the example module from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(EXAMPLES))
    import ray_serve_app

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ray_serve_app.build({"weights": str(engine), "device": "cpu", "threads": "1", "num_replicas": "2",
                               "num_cpus": "1", "steps": str(STEPS), "max_batch_size": "4",
                               "batch_wait_timeout_s": "0.2"})
    serve.run(app, name="lova", route_prefix="/")
    yield f"http://127.0.0.1:{port}/generate"
    serve.shutdown()
    ray.shutdown()


def post(url: str, body: bytes, query: str) -> tuple:
    request = urllib.request.Request(f"{url}?{query}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read(), response.headers  # case-insensitive
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_two_replicas_serve_sixteen_concurrent_requests_like_the_cli(served, cli, engine, tmp_path):
    features = read_safetensors(FIXTURES / "tiny" / "features.safetensors")["features"]
    jobs = []
    for i in range(16):
        rows = [5, 8, 12, 16][i % 4]  # the fixture has 16 rows
        path = tmp_path / f"features{i}.safetensors"
        write_features(path, np.roll(features, i, axis=0)[:rows])
        jobs.append((path, 100 + i))
    expected = [infer(cli, engine, path, tmp_path / f"cli{i}.wav", "--seed", str(seed), "--steps", str(STEPS))
                for i, (path, seed) in enumerate(jobs)]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(
            lambda job: post(served, job[0].read_bytes(), f"filename=f.safetensors&seed={job[1]}"), jobs))
    replicas = set()
    for (status, body, headers), wav, (_, seed) in zip(answers, expected, jobs):
        assert status == 200, body
        assert body == wav
        assert headers["X-Lova-Seed"] == str(seed)
        replicas.add(headers["X-Lova-Replica"])
    assert len(replicas) == 2, replicas


def test_bad_upload_is_a_400_with_the_message(served):
    status, body, _ = post(served, b"not a video", "filename=clip.mp4&seed=1")
    assert status == 400
    assert b"input.mp4" in body
