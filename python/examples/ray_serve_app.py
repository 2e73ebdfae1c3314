"""lova-fast on Ray Serve: one Pipeline per replica, requests batched into generate_many.

POST /generate with the raw bytes of a video (or of a features .safetensors
file) as the body; the response is the WAV (16-bit PCM, as `lova-fast infer`
writes). Query parameters: filename (its extension tells a video from a
features file; default clip.mp4), seed, steps, cfg. The response's headers
say the seed used (X-Lova-Seed) and which replica served it (X-Lova-Replica).

    serve run --app-dir python/examples ray_serve_app:build weights=lova-fast.safetensors device=cuda num_gpus=1 num_replicas=2
    curl --data-binary @clip.mp4 "http://127.0.0.1:8000/generate?filename=clip.mp4&seed=1" -o clip.wav

Each replica is a Ray actor holding one lova_fast.Pipeline (its own weights on
its own GPU); Serve routes each HTTP request to a replica, and @serve.batch
gathers the requests that arrive at one replica within batch_wait_timeout_s
(at most max_batch_size) into one generate_many call: one packed sampler batch.
"""

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

import lova_fast


@serve.deployment
class LovaFast:
    def __init__(
        self,
        weights: str,
        device: str = "auto",
        threads: Optional[int] = None,
        steps: int = 150,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.05,
    ):
        self.pipeline = lova_fast.Pipeline(weights, device=device, threads=threads)
        self.default_steps = steps
        self.generate_batch.set_max_batch_size(max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.replica = serve.get_replica_context().replica_tag

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batch(self, jobs: List[Tuple[str, Optional[int], int, float]]) -> List[Any]:
        """jobs: (input path, seed, steps, cfg); one Result or exception per job."""
        # generate_many shares its settings over the call: one call per setting.
        results: List[Any] = [None] * len(jobs)
        groups: Dict[Tuple[int, float], List[int]] = {}
        for i, (_, _, steps, cfg) in enumerate(jobs):
            groups.setdefault((steps, cfg), []).append(i)
        for (steps, cfg), members in groups.items():
            # The pipeline releases the GIL: a thread keeps the event loop
            # (and so the batching of the next requests) running meanwhile.
            outputs = await asyncio.to_thread(
                self.pipeline.generate_many,
                [jobs[i][0] for i in members],
                seed=[jobs[i][1] for i in members],
                steps=steps,
                cfg=cfg,
            )
            for i, output in zip(members, outputs):
                results[i] = output
        return results

    async def __call__(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path.rstrip("/") not in ("", "/generate"):
            return Response("POST /generate with the video or features as the body\n", status_code=404)
        query = request.query_params
        try:
            seed = int(query["seed"]) if "seed" in query else None
            steps = int(query.get("steps", self.default_steps))
            cfg = float(query.get("cfg", 5.0))
        except ValueError as e:
            return Response(f"bad query parameter: {e}\n", status_code=400)
        suffix = Path(query.get("filename", "clip.mp4")).suffix or ".mp4"
        body = await request.body()
        with tempfile.TemporaryDirectory() as tmp:
            upload = os.path.join(tmp, "input" + suffix)
            with open(upload, "wb") as f:
                f.write(body)
            result = await self.generate_batch((upload, seed, steps, cfg))
            if isinstance(result, lova_fast.InputError):
                return Response(f"{result}\n", status_code=400)
            if isinstance(result, Exception):
                return Response(f"{result}\n", status_code=500)
            wav = os.path.join(tmp, "audio.wav")
            await asyncio.to_thread(result.write_wav, wav)
            with open(wav, "rb") as f:
                audio = f.read()
        headers = {"X-Lova-Seed": str(result.seed), "X-Lova-Replica": self.replica}
        return Response(audio, media_type="audio/wav", headers=headers)


def build(args: Dict[str, str]) -> Application:
    """The application for `serve run ray_serve_app:build key=value ...`.

    weights (required), device (auto), threads, steps (150), max_batch_size (8),
    batch_wait_timeout_s (0.05): as LovaFast takes them. num_replicas (1),
    num_gpus (0; 1 = one GPU per replica), num_cpus (1): Ray placement. A
    config file's `deployments:` section overrides these (autoscaling too).
    """
    options: Dict[str, Any] = {
        "num_replicas": int(args.get("num_replicas", 1)),
        "ray_actor_options": {
            "num_gpus": float(args.get("num_gpus", 0)),
            "num_cpus": float(args.get("num_cpus", 1)),
        },
        # Enough requests in flight per replica to fill a batch.
        "max_ongoing_requests": 2 * int(args.get("max_batch_size", 8)),
    }
    return LovaFast.options(**options).bind(
        weights=args["weights"],
        device=args.get("device", "auto"),
        threads=int(args["threads"]) if "threads" in args else None,
        steps=int(args.get("steps", 150)),
        max_batch_size=int(args.get("max_batch_size", 8)),
        batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", 0.05)),
    )
