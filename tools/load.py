#!/usr/bin/env python3
"""Open-loop load generator for `lova-fast serve` (Python stdlib only).

Posts a mix of clip lengths at a fixed rate (arrivals do not wait for earlier
answers, as real traffic does not), waits for every job, and prints the
throughput (seconds of audio per wall second), latency percentiles and the
mean latent rows per sampler step (from /metrics, before and after).

    python3 tools/load.py --url http://127.0.0.1:8080 --rate 2 --requests 20 --steps 10
    python3 tools/load.py --video a.mp4 --video b.mp4 --rate 0.5 --requests 8

Without --video it writes features files (safetensors, `features` [N, WIDTH])
of --lengths seconds at 8 fps, filled with a fixed pseudo-random pattern.
"""

import argparse
import json
import os
import random
import struct
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def features_file(path, rows, width, seed):
    rng = random.Random(seed)
    data = struct.pack(f"<{rows * width}f", *(rng.uniform(-1, 1) for _ in range(rows * width)))
    header = json.dumps({"features": {"dtype": "F32", "shape": [rows, width], "data_offsets": [0, len(data)]}})
    header += " " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode() + data)


def multipart(fields):
    boundary = "lova-load-%016x" % random.getrandbits(64)
    out = []
    for name, value in fields:
        out.append(f"--{boundary}\r\n".encode())
        if isinstance(value, bytes):
            out.append(f'Content-Disposition: form-data; name="{name}"; filename="upload"\r\n'
                       "Content-Type: application/octet-stream\r\n\r\n".encode())
            out.append(value)
        else:
            out.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(out)


def call(url, token, data=None, content_type=None, method=None):
    req = urllib.request.Request(url, data=data, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def metrics(url, token):
    status, body, _ = call(f"{url}/metrics", token)
    if status != 200:
        sys.exit(f"GET /metrics: {status} {body[:200]!r}")
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--rate", type=float, default=1.0, help="arrivals per second (Poisson)")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--token", default=os.environ.get("LOVA_FAST_TOKEN"))
    ap.add_argument("--video", action="append", default=[], help="video files to post (instead of features)")
    ap.add_argument("--lengths", default="1,2,4,8", help="features clip lengths in seconds")
    ap.add_argument("--width", type=int, default=768, help="features width (the model's cond_token_dim; 128 for the tiny test model)")
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    url = args.url.rstrip("/")
    rng = random.Random(args.seed)

    tmp = tempfile.TemporaryDirectory()
    if args.video:
        inputs = [("video", open(v, "rb").read(), None) for v in args.video]
    else:
        inputs = []
        for i, s in enumerate(float(x) for x in args.lengths.split(",")):
            rows = max(1, round(s * args.fps))
            path = os.path.join(tmp.name, f"f{i}.safetensors")
            features_file(path, rows, args.width, i)
            inputs.append(("features", open(path, "rb").read(), rows / args.fps))

    before = metrics(url, args.token)
    results = []  # (latency, seconds of audio, status)
    lock = threading.Lock()

    def one(kind, data, n):
        fields = [(kind, data), ("steps", str(args.steps)), ("seed", str(n))]
        ct, body = multipart(fields)
        start = time.monotonic()
        status, answer, headers = call(f"{url}/v1/audio", args.token, body, ct)
        if status != 202:
            with lock:
                results.append((time.monotonic() - start, 0.0, f"http {status}"))
            return
        job = json.loads(answer)
        while True:
            time.sleep(0.05)
            _, answer, _ = call(f"{url}/v1/audio/{job['id']}", args.token)
            job = json.loads(answer)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
        with lock:
            results.append((time.monotonic() - start, job["seconds_of_audio"] if job["status"] == "succeeded" else 0.0,
                            job["status"]))

    threads = []
    started = time.monotonic()
    next_at = started
    for n in range(args.requests):
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        kind, data, _ = rng.choice(inputs)
        t = threading.Thread(target=one, args=(kind, data, n))
        t.start()
        threads.append(t)
        next_at += rng.expovariate(args.rate)
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    after = metrics(url, args.token)

    latencies = sorted(r[0] for r in results if r[2] == "succeeded")
    audio = sum(r[1] for r in results)
    by_status = {}
    for r in results:
        by_status[r[2]] = by_status.get(r[2], 0) + 1
    steps = after.get("lova_steps_total", 0) - before.get("lova_steps_total", 0)
    rows = after.get("lova_batch_rows_sum", 0) - before.get("lova_batch_rows_sum", 0)
    reqs = after.get("lova_batch_requests_sum", 0) - before.get("lova_batch_requests_sum", 0)
    print(f"requests: {len(results)} {by_status}")
    print(f"wall: {wall:.2f} s, audio: {audio:.2f} s, throughput: {audio / wall:.3f} audio s per wall s")
    print("latency: p50 %.2f s, p95 %.2f s, p99 %.2f s" % tuple(percentile(latencies, p) for p in (50, 95, 99)))
    if steps:
        print(f"batch: {steps:.0f} steps, mean {rows / steps:.1f} latent rows and {reqs / steps:.2f} requests per step")
    else:
        print("batch: no sampler steps were recorded in /metrics")


if __name__ == "__main__":
    main()
