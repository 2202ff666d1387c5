"""`earmark serve` on loopback: concurrent real-time streams, /v1/tag throughput, streams under
upload load, the server's memory over a soak, and shutdown with work in flight.

    python bench/serve.py [--streams 1,8,32] [--seconds 60] [--long-minutes 10] [--threads 2]
    python bench/serve.py --uploads [--upload-streams 1,8] [--concurrent-uploads 20] [--rounds 1]
    python bench/serve.py --soak [--soak-minutes 10] [--idle-minutes 2]
    python bench/serve.py --shutdown
    python bench/serve.py --uploads --soak --shutdown --server-args "--max-request-seconds 30"

1. A ``sat-tiny`` model with 2 s chunks and 527 outputs (AudioSet's size; untrained: only the
   time counts) is saved under bench/results/serve-work/ and served by ``earmark serve`` in
   its own process (``--threads``; ``--server-args`` appended to its command line), so that
   its memory is its own.
2. For each count in ``--streams``, that many WebSocket streams start together and send
   100 ms frames of 16-bit PCM at real time (frame k leaves when its audio has been played,
   k x 100 ms after the common start), so every stream's chunk falls due at the same moment.
   Chunk latency: from sending the frame that completes a chunk to receiving its message.
   A frame is late when it leaves more than one frame after it was due (the client or the
   machine could not keep up); unsent when the phase ended before it could leave (a server
   that stops reading blocks the socket); a chunk is missing when its message did not come
   within 30 s of the last frame. The largest count runs ``--long-minutes`` (the server's
   resident memory sampled every 10 s: the median of the first minute against that of the
   last), the others ``--seconds``.
3. ``/v1/tag`` against ``Tagger.tag`` in this process on the same ``--files`` WAV files of
   ``--file-seconds`` (one client, one request at a time, files read from disk both ways),
   alternated ``--repeats`` times; medians and their ratio.
4. ``--uploads``: for each count S in ``--upload-streams``, on one server, ``--rounds`` rounds
   of a "quiet" phase (S streams for ``--seconds``) and a "loaded" phase (the same while
   ``--concurrent-uploads`` U clients each post a ``--upload-minutes`` WAV of noise to
   ``/v1/tag`` and post again once answered). Uploads run in threads with blocking sockets,
   out of the event loop that paces the streams; at a phase's end the ones still waiting are
   abandoned (their sockets shut down). The server keeps working on abandoned uploads, so
   after each loaded phase the bench waits (at most ``--drain-seconds``) for the answer to a
   1 s clip, which queues behind them; a server that does not answer in time is replaced by
   a fresh one, so that no quiet phase runs on leftover work. Per phase: chunk latency p50 /
   p95 / max, late frames, missing chunks; uploads sent, answered 200, other statuses, errors
   and median seconds. The p95 ratio loaded / quiet per round and its median (target <= 2).
5. ``--soak``: a fresh server; after a warm-up (one stream for 4 s and a 1 s clip, not the
   long file), the largest of ``--upload-streams`` streams and U uploads for
   ``--soak-minutes``, then ``--idle-minutes`` of nothing. The server's resident memory
   (VmRSS) every 5 s: start (before any load), peak, end (the last sample of the idle phase)
   and end / start (target <= 1.3).
6. ``--shutdown``: a fresh server with U uploads in flight and the largest of
   ``--upload-streams`` streams open for 5 s gets SIGTERM; seconds until its process exits
   (target <= 5; killed after 60), its exit code, what the streams got (``closing`` messages,
   close codes) and the uploads' outcomes (in flight at the signal, and posted after it).

What runs: with none of ``--uploads``, ``--soak``, ``--shutdown`` the sweep (2) and /v1/tag
(3), as always; with any of them, those only, and the sweep and /v1/tag as well when
``--sweep`` or ``--streams`` is given (``--skip-tag`` skips /v1/tag).

Writes bench/results/serve.json (``--name``) and prints a markdown table per measurement.
Each measurement writes its own key (streams, tag, uploads, soak, shutdown) as soon as it
finishes, keeping the keys already in the file (``--uploads`` after every phase, with
``"complete": false`` until its last); ``--resume`` skips those already there and complete.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
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
TAG_PATH = "/v1/tag?model=tiny&top_k=5"
OPEN_TIMEOUT = 10.0  # seconds to connect a stream and get its "ready"
SEND_SLACK = 1.0  # a stream's sending may overrun its last frame's time by this much
LAST_CHUNKS = 30.0  # after the last frame, seconds to wait for the chunks still due
UPLOAD_TIMEOUT = 600.0  # one upload's socket timeout; phases abandon theirs sooner
SAMPLE_SECONDS = 5.0  # --soak's memory samples
SHUTDOWN_AFTER = 5.0  # --shutdown: seconds of streaming and uploads before SIGTERM
SHUTDOWN_WAIT = 60.0  # --shutdown: SIGKILL after this long


def make_model() -> Path:
    out = WORK / "sat-tiny-2s"
    if not (out / "config.json").exists():
        torch.manual_seed(0)
        model = earmark.create_model("sat-tiny", 527, chunk_seconds=CHUNK).eval()
        save_model_dir(model, out, [f"class {i}" for i in range(527)])
    return out


def start_server(model: Path, port: int, threads: int,
                 extra: Sequence[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "earmark", "serve", f"tiny={model}",
                             "--port", str(port), "--threads", str(threads), "--max-streams",
                             "256", "--log-level", "warning", *extra], env=env)
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


def stop_server(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # still finishing abandoned work: not worth waiting
            proc.kill()
            proc.wait(timeout=10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- streams ------------------------------------------------------------------------------------


def new_tally() -> dict:
    """What a phase's streams add up to (one_stream adds to it)."""
    return {"latencies": [], "server": [], "compute": [], "late": 0, "unsent": 0, "missing": 0,
            "frames": 0, "closing": 0, "errors": [], "close_codes": Counter(), "failed": []}


async def one_stream(url: str, audio: np.ndarray, t0: float, frames: int, out: dict) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    per_chunk = round(CHUNK / FRAME)
    expected = frames // per_chunk
    sent: dict[int, float] = {}
    latencies, server, compute, late = [], [], [], 0

    async def receive(ws):
        try:
            while len(latencies) < expected:
                msg = json.loads(await ws.recv())
                if msg["type"] == "chunk":
                    frame = (len(latencies) + 1) * per_chunk - 1  # the frame that completed it
                    latencies.append((time.perf_counter() - sent[frame]) * 1000.0)
                    server.append(msg["latency_ms"])
                    compute.append(msg["compute_ms"])
                elif msg["type"] == "closing":
                    out["closing"] += 1
                elif msg["type"] == "error":
                    out["errors"].append(msg.get("message"))
        except ConnectionClosed as err:  # the server's close code and reason, or ours
            close, side = (err.rcvd, "") if err.rcvd else (err.sent, "client ")
            out["close_codes"][f"{side}{close.code} {close.reason}".strip() if close
                               else "no close frame"] += 1

    async def send(ws):
        nonlocal late
        n = round(FRAME * SR)
        for k in range(frames):
            due = t0 + (k + 1) * FRAME
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent[k] = time.perf_counter()
            if sent[k] - due > FRAME:
                late += 1
            i = (k * n) % (len(audio) - n)
            try:
                await ws.send(audio[i:i + n].tobytes())
            except ConnectionClosed:
                return  # the receiver records how it ended

    try:
        # no keepalive pings: a stalled server would have the client drop the stream after
        # 20 s; the waits below bound the phase instead
        async with connect(url, max_queue=None, open_timeout=OPEN_TIMEOUT, close_timeout=5,
                           ping_interval=None) as ws:
            await ws.send(json.dumps({"sample_rate": SR, "format": "pcm_s16le", "top_k": 5,
                                      "threshold": 1.0}))
            first = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
            if first["type"] != "ready":
                raise RuntimeError(f"first message {first}")
            receiver = asyncio.create_task(receive(ws))
            sender = asyncio.create_task(send(ws))
            # A server that stops reading fills the socket's buffers and blocks the sender:
            # the phase still ends on time, the frames left count as unsent.
            end = t0 + frames * FRAME + SEND_SLACK
            try:
                for task, timeout in ((sender, end - time.perf_counter()),
                                      (receiver, LAST_CHUNKS)):
                    try:
                        await asyncio.wait_for(task, timeout=max(0.0, timeout))
                    except asyncio.TimeoutError:
                        pass  # wait_for cancelled it
            finally:
                sender.cancel()
                receiver.cancel()
    except Exception as err:  # noqa: BLE001 - one stream's failure is part of the result
        out["failed"].append(f"{type(err).__name__}: {err}")
    finally:
        out["latencies"] += latencies
        out["server"] += server
        out["compute"] += compute
        out["late"] += late
        out["unsent"] += frames - len(sent)
        out["frames"] += frames
        out["missing"] += expected - len(latencies)


def test_audio() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(20 * SR)) / SR
    audio = (0.2 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size))
    return (audio * 32767).astype("<i2")


async def stream_phase(port: int, count: int, seconds: float, out: dict | None = None) -> dict:
    """``count`` streams for ``seconds`` of audio; their tally (``out``, filled as they go)."""
    out = new_tally() if out is None else out
    frames = int(round(seconds / FRAME))
    url = f"ws://127.0.0.1:{port}/v1/stream"
    t0 = time.perf_counter() + 1.0  # every stream connects first, then all start together
    await asyncio.gather(*[one_stream(url, test_audio(), t0, frames, out)
                           for _ in range(count)])
    return out


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def stream_summary(t: dict) -> dict:
    return {"chunks": len(t["latencies"]), "p50_ms": _pct(t["latencies"], 50),
            "p95_ms": _pct(t["latencies"], 95), "max_ms": _pct(t["latencies"], 100),
            "server_p95_ms": _pct(t["server"], 95), "late_frames": t["late"],
            "unsent_frames": t["unsent"], "frames": t["frames"],
            "missing_chunks": t["missing"], "closing_messages": t["closing"],
            "close_codes": {str(k): v for k, v in t["close_codes"].items()},
            "errors": len(t["errors"]), "first_errors": t["errors"][:5],
            "failed_streams": t["failed"][:10]}


async def run_streams(port: int, count: int, seconds: float, pid: int) -> dict:
    memory: list[tuple[float, float]] = []

    async def sample_memory():
        start = time.perf_counter()
        while True:
            memory.append((round(time.perf_counter() - start, 1), round(rss_mb(pid), 1)))
            await asyncio.sleep(10)

    sampler = asyncio.create_task(sample_memory())
    out = await stream_phase(port, count, seconds)
    sampler.cancel()
    first = [m for s, m in memory if s <= 60]
    last = [m for s, m in memory if s >= memory[-1][0] - 60]
    row = {"streams": count, "seconds": seconds, "chunks": len(out["latencies"]),
           "p50_ms": _pct(out["latencies"], 50), "p95_ms": _pct(out["latencies"], 95),
           "max_ms": _pct(out["latencies"], 100),
           "server_p50_ms": _pct(out["server"], 50), "server_p95_ms": _pct(out["server"], 95),
           "batch_p50_ms": _pct(out["compute"], 50), "batch_p95_ms": _pct(out["compute"], 95),
           "late_frames": out["late"], "frames": out["frames"],
           "missing_chunks": out["missing"],
           "rss_first_minute_mb": statistics.median(first),
           "rss_last_minute_mb": statistics.median(last), "rss_samples": memory}
    if out["failed"] or out["errors"]:
        row["stream_errors"] = out["failed"] + out["errors"]
    return row


# ---- uploads ------------------------------------------------------------------------------------


def wav_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def long_wav(minutes: float) -> Path:
    path = WORK / f"noise-{minutes:g}min.wav"
    if not path.exists():
        x = 0.1 * np.random.default_rng(2).standard_normal(int(minutes * 60 * SR))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(wav_bytes(x))
        tmp.replace(path)  # an interrupted run leaves no half-written file behind
    return path


class Uploads:
    """``count`` clients, each posting ``body`` to /v1/tag and posting again once answered
    (or failed), until :meth:`stop`. Threads with blocking sockets keep this client out of the
    event loop that paces the streams (they wait in the kernel, not holding the GIL)."""

    def __init__(self, port: int, body: bytes, count: int):
        self.port, self.body, self.count = port, body, count
        self.records: list[tuple[float, float, int | str]] = []  # (start, end, status or error)
        self._lock = threading.Lock()
        self._stopping = False
        self._open: set[http.client.HTTPConnection] = set()
        self._threads: list[threading.Thread] = []

    def start(self) -> Uploads:
        self._threads = [threading.Thread(target=self._loop, name=f"upload-{i}", daemon=True)
                         for i in range(self.count)]
        for t in self._threads:
            t.start()
        return self

    def _loop(self) -> None:
        while not self._stopping:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=UPLOAD_TIMEOUT)
            start = time.perf_counter()
            try:
                conn.connect()
                with self._lock:  # registered before stop() looks, or stop() seen here
                    if self._stopping:
                        break
                    self._open.add(conn)
                conn.request("POST", TAG_PATH, body=self.body,
                             headers={"Content-Type": "audio/wav"})
                response = conn.getresponse()
                response.read()
                outcome: int | str = response.status
            except (OSError, http.client.HTTPException) as err:
                outcome = "abandoned" if self._stopping else type(err).__name__
            finally:
                with self._lock:
                    self._open.discard(conn)
                conn.close()
            with self._lock:
                self.records.append((start, time.perf_counter(), outcome))
            if not isinstance(outcome, int):
                time.sleep(0.5)  # a refused connection would otherwise spin

    def stop(self, wait: float = 10.0) -> None:
        """Abandon the uploads still waiting: shutting their sockets down wakes each thread's
        blocking send or receive at once (the server may go on working on them)."""
        with self._lock:
            self._stopping = True
            for conn in self._open:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except (OSError, AttributeError):
                    pass
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def summary(self, keep=lambda start, end: True) -> dict:
        with self._lock:
            records = [r for r in self.records if keep(r[0], r[1])]
        answered = [(e - s, o) for s, e, o in records if isinstance(o, int)]
        ok = [d for d, o in answered if o == 200]
        return {"sent": len(records), "status_200": len(ok),
                "other_statuses": dict(Counter(str(o) for _, o in answered if o != 200)),
                "errors": dict(Counter(o for _, _, o in records if isinstance(o, str))),
                "median_200_s": round(statistics.median(ok), 2) if ok else None,
                "median_answered_s": round(statistics.median(d for d, _ in answered), 2)
                if answered else None}


def post(port: int, body: bytes, timeout: float) -> int | str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", TAG_PATH, body=body, headers={"Content-Type": "audio/wav"})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as err:
        return type(err).__name__
    finally:
        conn.close()


def drain(port: int, timeout: float) -> float | None:
    """Seconds until the server answers a 1 s clip: the server runs whole-file jobs in turn,
    so the answer comes after the abandoned uploads queued before it (None: not in time)."""
    clip = wav_bytes(0.1 * np.random.default_rng(3).standard_normal(SR))
    start = time.perf_counter()
    while (left := timeout - (time.perf_counter() - start)) > 0:
        if post(port, clip, left) == 200:
            return round(time.perf_counter() - start, 2)
        time.sleep(0.5)  # refused (e.g. too many uploads): ask again
    return None


def ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 2) if num is not None and den else None


def measure_uploads(a, model: Path, store) -> dict:
    body = long_wav(a.upload_minutes).read_bytes()
    entry = {"config": {"upload_streams": a.upload_streams, "seconds": a.seconds,
                        "concurrent_uploads": a.concurrent_uploads,
                        "upload_minutes": a.upload_minutes, "upload_mb":
                        round(len(body) / 2**20, 1), "rounds": a.rounds,
                        "server_args": a.server_args, "argv": sys.argv[1:]},
             "comparisons": [], "complete": False}
    proc, fresh = start_server(model, a.port, a.threads, shlex.split(a.server_args)), False

    def phase(count: int, loaded: bool) -> dict:
        load = Uploads(a.port, body, a.concurrent_uploads).start() if loaded else None
        try:
            tally = asyncio.run(stream_phase(a.port, count, a.seconds))
        finally:
            if load:
                load.stop()
        out = stream_summary(tally)
        if load:
            out["uploads"] = load.summary()
        if proc.poll() is not None:
            out["server_exit_code"] = proc.returncode
        return out

    try:
        for count in (int(c) for c in a.upload_streams.split(",")):
            comp = {"streams": count, "rounds": []}
            entry["comparisons"].append(comp)
            for r in range(a.rounds):
                rnd: dict = {"round": r + 1, "fresh_server": fresh}
                comp["rounds"].append(rnd)
                if fresh:  # the last drain failed: leftover work would load the quiet phase
                    stop_server(proc, timeout=10)
                    proc, fresh = start_server(model, a.port, a.threads,
                                               shlex.split(a.server_args)), False
                print(f"{count} streams, round {r + 1}: quiet {a.seconds:g} s ...", flush=True)
                rnd["quiet"] = phase(count, loaded=False)
                store(entry)
                print(f"{count} streams, round {r + 1}: {a.concurrent_uploads} uploads "
                      f"{a.seconds:g} s ...", flush=True)
                rnd["loaded"] = phase(count, loaded=True)
                rnd["ratio_p95"] = ratio(rnd["loaded"]["p95_ms"], rnd["quiet"]["p95_ms"])
                if proc.poll() is None:
                    rnd["drain_s"] = drain(a.port, a.drain_seconds)
                    fresh = rnd["drain_s"] is None
                else:
                    fresh = True
                store(entry)
                print({k: rnd[k] for k in ("ratio_p95", "drain_s") if k in rnd}, flush=True)
            ratios = [x["ratio_p95"] for x in comp["rounds"] if x["ratio_p95"] is not None]
            comp["median_ratio_p95"] = round(statistics.median(ratios), 2) if ratios else None
        entry["complete"] = True
        store(entry)
    finally:
        stop_server(proc)
    return entry


# ---- soak and shutdown --------------------------------------------------------------------------


class RssSampler:
    """The server's VmRSS every ``every`` seconds in a thread: [(seconds, MB)]."""

    def __init__(self, proc: subprocess.Popen, every: float):
        self.proc, self.every = proc, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def elapsed(self) -> float:
        return round(time.perf_counter() - self._t0, 1)

    def _sample(self) -> None:
        if self.proc.poll() is None:
            self.samples.append((self.elapsed(), round(rss_mb(self.proc.pid), 1)))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def start(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()  # the end: the last moment of the run


def measure_soak(a, model: Path) -> dict:
    body = long_wav(a.upload_minutes).read_bytes()
    streams = max(int(c) for c in a.upload_streams.split(","))
    proc = start_server(model, a.port, a.threads, shlex.split(a.server_args))
    try:
        asyncio.run(stream_phase(a.port, 1, 4.0))  # warm-up, small: the start is the baseline
        post(a.port, wav_bytes(np.zeros(SR)), 60)
        sampler = RssSampler(proc, SAMPLE_SECONDS).start()
        load = Uploads(a.port, body, a.concurrent_uploads).start()
        try:
            tally = asyncio.run(stream_phase(a.port, streams, a.soak_minutes * 60))
        finally:
            load.stop()
        load_end = sampler.elapsed()
        idle_end = time.monotonic() + a.idle_minutes * 60
        while time.monotonic() < idle_end and proc.poll() is None:
            time.sleep(1.0)
        sampler.stop()
        exit_code = proc.poll()
    finally:
        stop_server(proc)
    mb = [m for _, m in sampler.samples]
    return {"config": {"streams": streams, "concurrent_uploads": a.concurrent_uploads,
                       "upload_minutes": a.upload_minutes, "soak_minutes": a.soak_minutes,
                       "idle_minutes": a.idle_minutes, "server_args": a.server_args,
                       "argv": sys.argv[1:]},
            "rss_start_mb": mb[0], "rss_peak_mb": max(mb), "rss_end_mb": mb[-1],
            "end_over_start": ratio(mb[-1], mb[0]), "load_ended_s": load_end,
            "server_exit_code": exit_code, "streams": stream_summary(tally),
            "uploads": load.summary(), "rss_samples": sampler.samples}


def measure_shutdown(a, model: Path) -> dict:
    body = long_wav(a.upload_minutes).read_bytes()
    streams = max(int(c) for c in a.upload_streams.split(","))
    proc = start_server(model, a.port, a.threads, shlex.split(a.server_args))
    load = Uploads(a.port, body, a.concurrent_uploads).start()
    tally = new_tally()
    timing: dict = {}

    async def scenario():
        # the streams would run well past the server's end; its closing ends them
        phase = asyncio.create_task(stream_phase(a.port, streams, SHUTDOWN_WAIT + 30, tally))
        await asyncio.sleep(1.0 + SHUTDOWN_AFTER)  # the streams start 1 s in
        timing["signal"] = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None and time.perf_counter() - timing["signal"] < SHUTDOWN_WAIT:
            await asyncio.sleep(0.01)
        timing["exit"] = time.perf_counter()
        timing["killed"] = proc.poll() is None
        if timing["killed"]:
            proc.kill()
        await asyncio.to_thread(load.stop)  # posting on to a closed port tells nothing more
        try:
            await asyncio.wait_for(phase, OPEN_TIMEOUT + LAST_CHUNKS)
        except asyncio.TimeoutError:
            pass  # the tally holds what they got

    try:
        asyncio.run(scenario())
    finally:
        if proc.poll() is None:  # also when the scenario failed before its signal
            proc.kill()
        proc.wait(timeout=10)
        load.stop()
    sig = timing["signal"]
    return {"config": {"streams": streams, "concurrent_uploads": a.concurrent_uploads,
                       "upload_minutes": a.upload_minutes, "signal_after_s": SHUTDOWN_AFTER,
                       "server_args": a.server_args, "argv": sys.argv[1:]},
            "signal_to_exit_s": round(timing["exit"] - sig, 2), "killed": timing["killed"],
            "exit_code": proc.returncode, "streams": stream_summary(tally),
            "uploads_answered_before": load.summary(lambda s, e: e < sig),
            "uploads_in_flight": load.summary(lambda s, e: s < sig <= e),
            "uploads_after_signal": load.summary(lambda s, e: s >= sig)}


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


# ---- tables -------------------------------------------------------------------------------------


def print_sweep(rows: list[dict], tag: dict | None) -> None:
    if rows:
        print("\n| streams | run | chunks | p50 ms | p95 ms | max ms | late frames "
              "| missing chunks | server RSS first / last minute (MB) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['streams']} | {r['seconds']:g} s | {r['chunks']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['max_ms']} | {r['late_frames']} of {r['frames']} | "
              f"{r['missing_chunks']} | {r['rss_first_minute_mb']} / {r['rss_last_minute_mb']} |")
    if tag:
        print(f"\n/v1/tag {tag['http_files_per_s']} files/s, in process "
              f"{tag['in_process_files_per_s']} files/s: ratio {tag['ratio']}")


def _uploads_cells(u: dict | None) -> str:
    """Two table cells: sent / 200 / other outcomes, median seconds 200 / answered."""
    if not u:
        return "| | |"
    other = ", ".join(f"{k}: {v}" for k, v in {**u["other_statuses"], **u["errors"]}.items())
    return (f"| {u['sent']} / {u['status_200']} / {other or '-'} "
            f"| {u['median_200_s']} / {u['median_answered_s']} |")


def print_uploads(entry: dict) -> None:
    print("\n| streams | round | phase | chunks | p50 ms | p95 ms | max ms | late (unsent) "
          "frames | missing chunks | uploads sent / 200 / other | median s 200 / answered |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for comp in entry["comparisons"]:
        for rnd in comp["rounds"]:
            for name in ("quiet", "loaded"):
                if name not in rnd:
                    continue
                p = rnd[name]
                print(f"| {comp['streams']} | {rnd['round']} | {name} | {p['chunks']} | "
                      f"{p['p50_ms']} | {p['p95_ms']} | {p['max_ms']} | {p['late_frames']} "
                      f"({p['unsent_frames']}) of {p['frames']} | {p['missing_chunks']} "
                      f"{_uploads_cells(p.get('uploads'))}")
    for comp in entry["comparisons"]:
        rounds = [x.get("ratio_p95") for x in comp["rounds"]]
        drains = [x.get("drain_s") for x in comp["rounds"]]
        print(f"\n{comp['streams']} streams: p95 loaded / quiet {rounds}, median "
              f"{comp.get('median_ratio_p95')} (target <= 2); drained after loaded phases "
              f"in {drains} s")


def print_soak(s: dict) -> None:
    c, st, u = s["config"], s["streams"], s["uploads"]
    print("\n| streams + uploads | load / idle min | RSS start MB | peak MB | end MB | end / start "
          "| stream p95 ms | missing chunks | uploads sent / 200 / other "
          "| median s 200 / answered |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {c['streams']} + {c['concurrent_uploads']} | {c['soak_minutes']:g} / "
          f"{c['idle_minutes']:g} | {s['rss_start_mb']} | {s['rss_peak_mb']} | "
          f"{s['rss_end_mb']} | {s['end_over_start']} (target <= 1.3) | {st['p95_ms']} | "
          f"{st['missing_chunks']} {_uploads_cells(u)}")


def print_shutdown(s: dict) -> None:
    st = s["streams"]

    def outcomes(u: dict) -> str:
        got = {"200": u["status_200"], **u["other_statuses"], **u["errors"]}
        return ", ".join(f"{k}: {v}" for k, v in got.items() if v) or "-"

    print("\n| SIGTERM to exit s | exit code | streams: closing msgs / close codes / chunks "
          "| uploads in flight at SIGTERM | uploads posted after |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {s['signal_to_exit_s']}{' (killed)' if s['killed'] else ''} (target <= 5) | "
          f"{s['exit_code']} | {st['closing_messages']} / {st['close_codes'] or '-'} / "
          f"{st['chunks']} | {outcomes(s['uploads_in_flight'])} | "
          f"{outcomes(s['uploads_after_signal'])} |")


# ---- main ---------------------------------------------------------------------------------------


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", default=None, help="stream counts of the sweep (1,8,32)")
    p.add_argument("--sweep", action="store_true",
                   help="the sweep and /v1/tag too, with --uploads, --soak or --shutdown")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--long-minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--file-seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-tag", action="store_true")
    p.add_argument("--uploads", action="store_true", help="stream latency quiet vs under uploads")
    p.add_argument("--soak", action="store_true", help="server memory over streams + uploads")
    p.add_argument("--shutdown", action="store_true", help="SIGTERM with work in flight")
    p.add_argument("--upload-streams", default="1,8",
                   help="stream counts of --uploads (the largest for --soak and --shutdown)")
    p.add_argument("--concurrent-uploads", type=int, default=20)
    p.add_argument("--upload-minutes", type=float, default=10.0, help="the uploaded WAV's length")
    p.add_argument("--rounds", type=int, default=1, help="quiet + loaded rounds of --uploads")
    p.add_argument("--drain-seconds", type=float, default=300.0,
                   help="--uploads: wait this long for abandoned uploads, then a fresh server")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--idle-minutes", type=float, default=2.0)
    p.add_argument("--server-args", default="", help="appended to `earmark serve`'s arguments")
    p.add_argument("--resume", action="store_true",
                   help="skip measurements already complete in the results file")
    p.add_argument("--name", default="serve", help="results file stem")
    a = p.parse_args(argv)
    modes = [m for m in ("uploads", "soak", "shutdown") if getattr(a, m)]
    sweep = a.sweep or a.streams is not None or not modes
    torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    model = make_model()

    path = RESULTS / f"{a.name}.json"
    result = json.loads(path.read_text()) if path.exists() else {}

    def done(key: str) -> bool:
        v = result.get(key)
        return a.resume and v is not None and not (isinstance(v, dict)
                                                   and v.get("complete") is False)

    def store(**items) -> None:
        result.update(items)
        write_json(path, result)

    skipped = [k for k, wanted in (("streams", sweep), ("tag", sweep and not a.skip_tag),
                                   ("uploads", a.uploads), ("soak", a.soak),
                                   ("shutdown", a.shutdown)) if wanted and done(k)]
    if skipped:
        print(f"already in {path.name}, skipped (--resume): {', '.join(skipped)}", flush=True)
    result.update({"machine": machine_info(a.threads), "model": "sat-tiny, chunk 2 s, 527 outputs",
                   "server_threads": a.threads, "frame_seconds": FRAME})

    if sweep and not (done("streams") and (a.skip_tag or done("tag"))):
        counts = [int(c) for c in (a.streams or "1,8,32").split(",")]
        proc = start_server(model, a.port, a.threads, shlex.split(a.server_args))
        rows = result["streams"] if done("streams") else []
        tag = result.get("tag")
        try:
            if not done("streams"):
                for count in counts:
                    seconds = a.long_minutes * 60 if count == max(counts) else a.seconds
                    print(f"{count} streams for {seconds:g} s ...", flush=True)
                    row = asyncio.run(run_streams(a.port, count, seconds, proc.pid))
                    rows.append(row)
                    print({k: v for k, v in row.items() if k != "rss_samples"}, flush=True)
                store(streams=rows, argv=sys.argv[1:])
            if not a.skip_tag:
                tag = tag_throughput(a.port, model, make_files(a.files, a.file_seconds),
                                     a.repeats)
                print(tag, flush=True)
                store(tag=tag, argv=sys.argv[1:])
            else:  # an earlier run's /v1/tag figures stay
                store(tag=result.get("tag"))
        finally:
            stop_server(proc)
        print_sweep(rows, None if a.skip_tag else tag)
    if a.uploads and not done("uploads"):
        print_uploads(measure_uploads(a, model, lambda entry: store(uploads=entry)))
    if a.soak and not done("soak"):
        print(f"soak: {a.soak_minutes:g} min of load, {a.idle_minutes:g} min idle ...",
              flush=True)
        store(soak=measure_soak(a, model))
        print_soak(result["soak"])
    if a.shutdown and not done("shutdown"):
        print("shutdown ...", flush=True)
        store(shutdown=measure_shutdown(a, model))
        print_shutdown(result["shutdown"])


if __name__ == "__main__":
    main()
