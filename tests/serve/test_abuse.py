"""`earmark serve` against careless and hostile clients: every request's work bounded before
it starts, uploads scored in pieces behind the streams and dropped when their client leaves,
stream slots only for configured connections, malformed headers answered with a 4xx, memory
handed back, and the token covering what names the models."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import numpy as np
import pytest

from earmark.serve import app as serve_app
from earmark.serve import memory
from earmark.serve.batcher import DeadlineExceeded, InferenceWorker
from tests.serve.conftest import SR, RunningServer, noise, pcm16, wav_bytes
from tests.serve.test_app import error_and_close, next_chunk, start_stream

WebSocketDenialResponse = pytest.importorskip("starlette.testclient").WebSocketDenialResponse


def metric(client, line_start: str) -> float:
    """The value of the first /metrics line starting with ``line_start`` (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- 1. bounded work ----------------------------------------------------------------------------


def test_a_chunk_below_the_models_window_is_refused_naming_the_floor(make_client, vit):
    client = make_client({"vit": vit})
    floor = client.get("/v1/models").json()["models"][0]["min_chunk_seconds"]
    assert floor >= serve_app.MIN_CHUNK_SECONDS
    r = client.post("/v1/tag?chunk=0.000001", content=wav_bytes(noise(2.0)))
    assert r.status_code == 422
    assert f"shorter than {floor:g} s" in r.json()["detail"] and "vit" in r.json()["detail"]
    ok = client.post(f"/v1/tag?chunk={floor}", content=wav_bytes(noise(1.0)))
    assert ok.status_code == 200 and len(ok.json()["chunks"]) == int(np.ceil(1.0 / floor))


def test_too_many_chunks_are_refused_before_any_is_scored(make_client, vit):
    client = make_client({"vit": vit}, max_chunks=5)
    r = client.post("/v1/tag?chunk=0.2", content=wav_bytes(noise(2.0)))
    assert r.status_code == 422
    assert "10 chunks" in r.json()["detail"] and "--max-chunks" in r.json()["detail"]
    assert client.post("/v1/tag?chunk=0.4", content=wav_bytes(noise(2.0))).status_code == 200


def test_audio_longer_than_the_limit_is_refused_from_its_header(make_client, vit):
    client = make_client({"vit": vit}, max_upload_minutes=1 / 60)  # 1 s
    r = client.post("/v1/tag", content=wav_bytes(noise(2.0)))
    assert r.status_code == 422 and "--max-upload-minutes" in r.json()["detail"]


def test_a_request_over_its_time_budget_gets_503_and_the_server_goes_on(make_client, vit):
    client = make_client({"vit": vit}, max_request_seconds=0.3, max_chunks=100000)
    t0 = time.monotonic()
    r = client.post("/v1/tag?chunk=0.2&events=1", content=wav_bytes(noise(600.0)))
    took = time.monotonic() - t0
    assert r.status_code == 503 and "--max-request-seconds" in r.json()["detail"]
    assert took < 10, f"the request ran {took:.1f} s past its 0.3 s budget"
    assert client.post("/v1/tag", content=wav_bytes(noise(1.0))).status_code == 200
    assert metric(client, 'earmark_http_requests_total{path="/v1/tag",status="503"}') == 1


def endless_upload(closed: threading.Event, started: threading.Event):
    """An upload job that never ends by itself: a piece of work every 10 ms."""
    def steps(*args, **kw):
        try:
            started.set()
            while True:
                time.sleep(0.01)
                yield
        finally:
            closed.set()  # the worker closed the generator
    return steps


def test_work_for_a_client_that_left_is_dropped_and_counted_as_499(vit, monkeypatch):
    closed, started = threading.Event(), threading.Event()
    monkeypatch.setattr(serve_app, "_upload_steps", endless_upload(closed, started))
    app = serve_app.create_app({"vit": vit}, serve_app.ServeOptions(max_request_seconds=600))
    with RunningServer(app) as url:
        port = int(url.rsplit(":", 1)[1])
        body = wav_bytes(noise(1.0))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert started.wait(10), "the upload never reached the worker"
        # the client has gone: its job must end at the next piece, long before any budget
        assert closed.wait(5), "the worker kept scoring an upload nobody waits for"
        deadline = time.monotonic() + 5
        import urllib.request
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
            if 'earmark_http_requests_total{path="/v1/tag",status="499"} 1.0' in text:
                break
            time.sleep(0.1)
        assert 'status="499"} 1.0' in text and 'path="/v1/tag",status="200"' not in text


# ---- 2. streams first -------------------------------------------------------------------------


def test_a_stream_chunk_is_scored_between_the_pieces_of_a_long_upload(sat):
    """An upload of 200 pieces of 10 ms: a stream's chunk submitted meanwhile comes back
    after at most a piece or two, not after the whole upload."""
    worker = InferenceWorker().start()
    session = sat.stream()
    pending = session.feed(noise(1.0))
    pieces = []

    def upload():
        for _ in range(200):
            time.sleep(0.01)
            pieces.append(time.monotonic())
            yield
        return "done"

    async def both():
        job = asyncio.ensure_future(worker.steps(upload()))
        while len(pieces) < 5:  # the upload is under way
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        results = session.take(await worker.score(pending))
        waited = time.monotonic() - t0
        return results, waited, len(pieces), await job

    try:
        results, waited, pieces_then, answer = asyncio.run(both())
    finally:
        worker.close()
    assert answer == "done" and len(results) == 1
    assert pieces_then < 50, f"the chunk waited for {pieces_then} of the upload's 200 pieces"
    assert waited < 0.5


def test_a_job_past_its_deadline_ends_at_its_next_piece():
    worker = InferenceWorker().start()
    closed = threading.Event()

    def forever():
        try:
            while True:
                time.sleep(0.01)
                yield
        finally:
            closed.set()

    async def run():
        return await worker.steps(forever(), deadline=time.monotonic() + 0.2)

    try:
        with pytest.raises(DeadlineExceeded):
            asyncio.run(asyncio.wait_for(run(), 10))
    finally:
        worker.close()
    assert closed.is_set()


# ---- 3. configuration before a slot -------------------------------------------------------------


def test_idle_sockets_do_not_hold_stream_slots(make_client, sat):
    client = make_client({"sat": sat}, max_streams=1, max_unconfigured=2, config_seconds=1.0)
    with client.websocket_connect("/v1/stream") as idle1, \
            client.websocket_connect("/v1/stream") as idle2:
        # two sockets that never configure: the unconfigured cap is full, ...
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/v1/stream"):
                pass
        assert denied.value.status_code == 503
        # ... and once they are closed for their silence, a real client takes the one slot
        for ws in (idle1, idle2):
            msg, code = error_and_close(ws)
            assert "--config-seconds" in msg["message"] and code == 1008
    with client.websocket_connect("/v1/stream") as ws:
        start_stream(ws)
        ws.send_bytes(pcm16(noise(1.0)).tobytes())
        assert next_chunk(ws)["type"] == "chunk"


def test_a_configured_stream_is_served_while_other_sockets_idle(make_client, sat):
    client = make_client({"sat": sat}, max_streams=1, max_unconfigured=4, config_seconds=30)
    with client.websocket_connect("/v1/stream"), client.websocket_connect("/v1/stream"):
        with client.websocket_connect("/v1/stream") as ws:  # the idle ones hold no slot
            start_stream(ws)
            ws.send_bytes(pcm16(noise(1.0)).tobytes())
            assert next_chunk(ws)["type"] == "chunk"
            assert metric(client, "earmark_streams_unconfigured") == 2


# ---- 4. malformed headers -----------------------------------------------------------------------


def riff(rate=SR, channels=1, bits=16, frames=1600, data_size=None, cut=None) -> bytes:
    """A PCM WAV whose header says what it is told to, whatever the data holds."""
    data = np.zeros(frames * max(channels, 1), "<i2").tobytes()
    size = len(data) if data_size is None else data_size
    block = max(channels, 0) * bits // 8
    out = (b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
           + struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * block) & 0xFFFFFFFF,
                         block, bits)
           + b"data" + struct.pack("<I", size & 0xFFFFFFFF) + data)
    return out[:cut] if cut else out


@pytest.mark.parametrize("body, status, says", [
    (riff(rate=0), 422, "sample rate 0 Hz"),
    (riff(rate=2_000_000_000), 422, "sample rate 2000000000 Hz"),
    (riff(rate=1), 422, "sample rate 1 Hz"),
    (riff(channels=0), 415, "Channel count is zero"),
    (riff(channels=1000, frames=2), 422, "1000 channels"),
    (riff(data_size=-2), 200, None),  # a length beyond the data: what is there is read
    (riff(cut=30), 415, "cannot decode"),  # cut inside the header
    (riff(cut=44 + 101), 200, None),  # cut inside a sample: the whole ones are read
    (riff(channels=3, frames=100, cut=44 + 20), 200, None),  # cut inside a frame
])
def test_malformed_headers_get_a_4xx_naming_the_problem(make_client, sat, body, status, says):
    client = make_client({"sat": sat})
    r = client.post("/v1/tag", content=body)
    assert r.status_code == status, r.text
    if says:
        assert says in r.json()["detail"] and "upload" in r.json()["detail"]
    assert metric(client, 'earmark_http_requests_total{path="/v1/tag",status="500"}') == 0


@pytest.mark.parametrize("config, says", [
    ('{"sample_rate": 0}', "sample_rate"),
    ('{"sample_rate": 100000000}', "sample_rate"),
    ('{"sample_rate": -16000}', "sample_rate"),
    ('{"sample_rate": 16000, "channels": 0}', "unknown key"),
])
def test_malformed_stream_configurations_are_refused(make_client, sat, config, says):
    with make_client({"sat": sat}).websocket_connect("/v1/stream") as ws:
        ws.send_text(config)
        msg, code = error_and_close(ws)
    assert says in msg["message"] and code == 1007


def test_a_cut_off_stream_frame_is_refused(make_client, sat):
    with make_client({"sat": sat}).websocket_connect("/v1/stream") as ws:
        start_stream(ws, format="f32le")
        ws.send_bytes(np.zeros(100, "<f4").tobytes()[:-1])
        msg, code = error_and_close(ws)
    assert "399 bytes" in msg["message"] and code == 1007


def test_every_5xx_is_counted(make_client, sat, monkeypatch):
    client = make_client({"sat": sat})

    def broken(*args, **kw):
        raise RuntimeError("a bug")
        yield

    monkeypatch.setattr(serve_app, "_upload_steps", broken)
    with pytest.raises(RuntimeError):  # the test client re-raises what the server logged
        client.post("/v1/tag", content=wav_bytes(noise(0.5)))
    assert metric(client, 'earmark_http_requests_total{path="/v1/tag",status="500"}') == 1


# ---- 5. memory ----------------------------------------------------------------------------------


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status here")


def test_release_hands_fragmented_free_memory_back():
    if memory._malloc_trim() is None:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    memory.release()
    before = rss_mb()
    # 100 kB blocks come from the heap, not from mmap: freeing all but every 50th leaves
    # the heap full of holes that the allocator keeps
    blocks = [np.ones(100_000 // 8) for _ in range(3000)]
    kept = blocks[::50]
    del blocks
    held = rss_mb()
    assert memory.release()
    after = rss_mb()
    assert held - before > 200, "the allocation did not raise the resident set"
    assert after - before < 0.25 * (held - before), (before, held, after)
    del kept  # alive until here: the holes are what the allocator would keep


def test_the_worker_releases_memory_after_its_last_upload(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release", lambda: calls.append(time.monotonic()) or True)
    worker = InferenceWorker().start()

    def job(n):
        for _ in range(n):
            yield
        return n

    async def run():
        return await asyncio.gather(worker.steps(job(3)), worker.steps(job(5)))

    try:
        assert asyncio.run(run()) == [3, 5]
    finally:
        worker.close()
    assert len(calls) == 1  # once both were done, not after each piece


# ---- 6. the token -------------------------------------------------------------------------------


def test_with_a_token_health_says_only_ok_and_the_docs_are_not_public(make_client, sat):
    client = make_client({"sat": sat}, token="s3cret")
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/docs", "/openapi.json"):
        assert client.get(path).status_code in (401, 404)
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code in (
            401, 404)
    open_client = make_client({"sat": sat})
    assert open_client.get("/openapi.json").status_code == 200
    assert open_client.get("/healthz").json()["models"] == ["sat"]


def test_the_command_lines_limits_are_serve_options_defaults():
    from earmark.cli.use import SERVE_LIMITS

    options = serve_app.ServeOptions()
    assert {k: getattr(options, k) for k in SERVE_LIMITS} == {
        k: default for k, (_, default, _) in SERVE_LIMITS.items()}


def test_a_client_that_leaves_mid_upload_is_a_499_not_a_500(vit):
    import urllib.request

    app = serve_app.create_app({"vit": vit})
    with RunningServer(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/tag HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                      + b"\x00" * 1000)
            time.sleep(0.3)
        deadline, text = time.monotonic() + 5, ""
        while time.monotonic() < deadline and 'status="499"' not in text:
            time.sleep(0.1)
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                text = r.read().decode()
        assert 'earmark_http_requests_total{path="/v1/tag",status="499"} 1.0' in text
        assert 'status="500"' not in text
