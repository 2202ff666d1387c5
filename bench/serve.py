"""`earmark serve` on loopback: concurrent real-time streams and /v1/tag throughput.

    python bench/serve.py [--streams 1,8,32] [--seconds 60] [--long-minutes 10] [--threads 2]

1. A ``sat-tiny`` model with 2 s chunks and 527 outputs (AudioSet's size; untrained: only the
   time counts) is saved under bench/results/serve-work/ and served by ``earmark serve`` in
   its own process (``--threads``), so that its memory is its own.
2. For each count in ``--streams``, that many WebSocket streams start together and send
   100 ms frames of 16-bit PCM at real time (frame k leaves when its audio has been played,
   k x 100 ms after the common start), so every stream's chunk falls due at the same moment.
   Chunk latency: from sending the frame that completes a chunk to receiving its message.
   A frame is late when it leaves more than one frame after it was due (the client or the
   machine could not keep up); a chunk is missing when its message never came. The largest
   count runs ``--long-minutes`` (the server's resident memory sampled every 10 s: the
   median of the first minute against that of the last), the others ``--seconds``.
3. ``/v1/tag`` against ``Tagger.tag`` in this process on the same ``--files`` WAV files of
   ``--file-seconds`` (one client, one request at a time, files read from disk both ways),
   alternated ``--repeats`` times; medians and their ratio.

Writes bench/results/serve.json (``--name``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fsdd_speakers import machine_info  # noqa: E402
from timing import alternate, medians, wall  # noqa: E402

import earmark  # noqa: E402
from earmark.files import write_json  # noqa: E402
from earmark.models.directory import save_model_dir  # noqa: E402

RESULTS = HERE / "results"
WORK = RESULTS / "serve-work"
SR = 16000
FRAME = 0.1  # seconds per frame
CHUNK = 2.0  # the model's chunk


def make_model() -> Path:
    out = WORK / "sat-tiny-2s"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model = earmark.create_model("sat-tiny", 527, chunk_seconds=CHUNK).eval()
        save_model_dir(model, out, [f"class {i}" for i in range(527)])
    return out


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "earmark", "serve", f"tiny={model}",
                             "--port", str(port), "--threads", str(threads), "--max-streams",
                             "256", "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}") from None
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- streams ------------------------------------------------------------------------------------


async def one_stream(url: str, audio: np.ndarray, t0: float, frames: int, out: dict) -> None:
    from websockets.asyncio.client import connect

    per_chunk = round(CHUNK / FRAME)
    sent: dict[int, float] = {}
    latencies, server, compute, late = [], [], [], 0
    async with connect(url, max_queue=None) as ws:
        await ws.send(json.dumps({"sample_rate": SR, "format": "pcm_s16le", "top_k": 5,
                                  "threshold": 1.0}))
        assert json.loads(await ws.recv())["type"] == "ready"

        async def receive():
            got = 0
            while got < frames // per_chunk:
                msg = json.loads(await ws.recv())
                if msg["type"] == "chunk":
                    frame = (got + 1) * per_chunk - 1  # the frame that completed it
                    latencies.append((time.perf_counter() - sent[frame]) * 1000.0)
                    server.append(msg["latency_ms"])
                    compute.append(msg["compute_ms"])
                    got += 1
                elif msg["type"] == "error":
                    raise RuntimeError(msg["message"])

        receiver = asyncio.create_task(receive())
        n = round(FRAME * SR)
        for k in range(frames):
            due = t0 + (k + 1) * FRAME
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent[k] = time.perf_counter()
            if sent[k] - due > FRAME:
                late += 1
            i = (k * n) % (len(audio) - n)
            await ws.send(audio[i:i + n].tobytes())
        try:
            await asyncio.wait_for(receiver, timeout=30)
        except asyncio.TimeoutError:
            receiver.cancel()
    out["latencies"] += latencies
    out["server"] += server
    out["compute"] += compute
    out["late"] += late
    out["missing"] += frames // per_chunk - len(latencies)


async def run_streams(port: int, count: int, seconds: float, pid: int) -> dict:
    rng = np.random.default_rng(0)
    t = np.arange(int(20 * SR)) / SR
    audio = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size))
    audio = (audio * 32767).astype("<i2")
    frames = int(round(seconds / FRAME))
    out = {"latencies": [], "server": [], "compute": [], "late": 0, "missing": 0}
    memory: list[tuple[float, float]] = []

    async def sample_memory():
        start = time.perf_counter()
        while True:
            memory.append((round(time.perf_counter() - start, 1), round(rss_mb(pid), 1)))
            await asyncio.sleep(10)

    url = f"ws://127.0.0.1:{port}/v1/stream"
    sampler = asyncio.create_task(sample_memory())
    t0 = time.perf_counter() + 1.0  # every stream connects first, then all start together
    await asyncio.gather(*[one_stream(url, audio, t0, frames, out) for _ in range(count)])
    sampler.cancel()
    lat = np.array(out["latencies"])
    first = [m for s, m in memory if s <= 60]
    last = [m for s, m in memory if s >= memory[-1][0] - 60]
    return {"streams": count, "seconds": seconds, "chunks": int(lat.size),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "max_ms": round(float(lat.max()), 1),
            "server_p50_ms": round(float(np.percentile(out["server"], 50)), 1),
            "server_p95_ms": round(float(np.percentile(out["server"], 95)), 1),
            "batch_p50_ms": round(float(np.percentile(out["compute"], 50)), 1),
            "batch_p95_ms": round(float(np.percentile(out["compute"], 95)), 1),
            "late_frames": out["late"],
            "frames": frames * count, "missing_chunks": out["missing"],
            "rss_first_minute_mb": statistics.median(first),
            "rss_last_minute_mb": statistics.median(last), "rss_samples": memory}


# ---- /v1/tag ------------------------------------------------------------------------------------


def tag_throughput(port: int, model: Path, files: list[Path], repeats: int) -> dict:
    tagger = earmark.load(model)
    url = f"http://127.0.0.1:{port}/v1/tag?model=tiny&top_k=5"

    def in_process():
        for f in files:
            tagger.tag(f, top_k=5)

    def over_http():
        for f in files:
            req = urllib.request.Request(url, data=f.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                json.load(r)

    in_process(), over_http()  # warm up both
    times = alternate({"in_process": lambda: wall(in_process), "http": lambda: wall(over_http)},
                      repeats)
    med = medians(times)
    return {"files": len(files), "in_process_files_per_s": round(len(files) / med["in_process"], 2),
            "http_files_per_s": round(len(files) / med["http"], 2),
            "ratio": round(med["in_process"] / med["http"], 3),
            "times_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def make_files(n: int, seconds: float) -> list[Path]:
    folder = WORK / f"files-{n}x{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        path = folder / f"clip{i:03d}.wav"
        if not path.exists():
            x = 0.1 * rng.standard_normal(int(seconds * SR))
            sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
        out.append(path)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", default="1,8,32")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--long-minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--file-seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-tag", action="store_true")
    p.add_argument("--name", default="serve", help="results file stem")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    model = make_model()
    counts = [int(c) for c in a.streams.split(",")]
    proc = start_server(model, a.port, a.threads)
    rows = []
    try:
        info = machine_info(a.threads)
        for count in counts:
            seconds = a.long_minutes * 60 if count == max(counts) else a.seconds
            print(f"{count} streams for {seconds:g} s ...", flush=True)
            row = asyncio.run(run_streams(a.port, count, seconds, proc.pid))
            rows.append(row)
            print({k: v for k, v in row.items() if k != "rss_samples"}, flush=True)
        tag = None if a.skip_tag else tag_throughput(
            a.port, model, make_files(a.files, a.file_seconds), a.repeats)
        if tag:
            print(tag, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result = {"machine": info, "model": "sat-tiny, chunk 2 s, 527 outputs",
              "server_threads": a.threads, "frame_seconds": FRAME, "streams": rows,
              "tag": tag, "argv": sys.argv[1:]}
    write_json(RESULTS / f"{a.name}.json", result)
    print("\n| streams | run | chunks | p50 ms | p95 ms | max ms | late frames | missing chunks "
          "| server RSS first / last minute (MB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['streams']} | {r['seconds']:g} s | {r['chunks']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['max_ms']} | {r['late_frames']} of {r['frames']} | "
              f"{r['missing_chunks']} | {r['rss_first_minute_mb']} / {r['rss_last_minute_mb']} |")
    if tag:
        print(f"\n/v1/tag {tag['http_files_per_s']} files/s, in process "
              f"{tag['in_process_files_per_s']} files/s: ratio {tag['ratio']}")


if __name__ == "__main__":
    main()
