"""`earmark serve` through FastAPI's test client: REST, WebSocket, limits and bad input."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import torch

from earmark.infer.stream import StreamSession
from earmark.serve import EventTracker
from tests.serve.conftest import LABELS, SR, noise, pcm16, wav_bytes

WebSocketDisconnect = pytest.importorskip("starlette.websockets").WebSocketDisconnect
WebSocketDenialResponse = pytest.importorskip("starlette.testclient").WebSocketDenialResponse


def as_pairs(labels: list[dict]) -> list[tuple[str, float]]:
    return [(d["label"], d["score"]) for d in labels]


def assert_same_labels(got: list[dict], want: list[tuple[str, float]], atol: float = 1e-5):
    assert [d["label"] for d in got] == [label for label, _ in want]
    np.testing.assert_allclose([d["score"] for d in got], [s for _, s in want], atol=atol)


def error_and_close(ws) -> tuple[dict, int]:
    """The error message a refused stream gets, and the close code that follows it."""
    msg = ws.receive_json()
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    return msg, closed.value.code


def start_stream(ws, **config) -> dict:
    ws.send_json({"sample_rate": SR, "format": "pcm_s16le", **config})
    ready = ws.receive_json()
    assert ready["type"] == "ready"
    return ready


def next_chunk(ws) -> dict:
    """The next chunk message, past any event messages."""
    while (msg := ws.receive_json())["type"] in ("onset", "offset"):
        pass
    return msg


def chunks_and_events(ws, until: str = "flushed") -> tuple[list[dict], list[dict]]:
    chunks, events = [], []
    while True:
        msg = ws.receive_json()
        if msg["type"] == until:
            return chunks, events
        (chunks if msg["type"] == "chunk" else events).append(msg)


# ---- REST ---------------------------------------------------------------------------------------


def test_models_describes_every_served_model(make_client, sat, vit):
    body = make_client().get("/v1/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"sat", "vit"}
    assert by_name["sat"]["labels"] == LABELS and by_name["sat"]["sample_rate"] == SR
    assert by_name["sat"]["streaming"] is True and by_name["sat"]["chunk_seconds"] == 1.0
    assert by_name["vit"]["streaming"] is False and by_name["vit"]["chunk_seconds"] == 1.0
    assert make_client().get("/healthz").json() == {"status": "ok", "models": ["sat", "vit"],
                                                     "streams": 0}


def test_chunk_option_sets_full_context_models_chunk_only(make_client, sat, vit):
    # --chunk is for full-context models; a streaming model keeps the chunk it was made for
    models = make_client(chunk_seconds=0.5).get("/v1/models").json()["models"]
    assert {m["name"]: m["chunk_seconds"] for m in models} == {"sat": 1.0, "vit": 0.5}


@pytest.mark.parametrize("name", ["sat", "vit"])
def test_tag_gives_what_the_tagger_gives_on_the_same_file(make_client, name, request, tmp_path):
    tagger = request.getfixturevalue(name)
    client = make_client()
    data = wav_bytes(noise(2.6, seed=3, sr=22050), sr=22050)  # resampled to the model's rate
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    want = tagger.tag(path, top_k=3)
    raw = client.post(f"/v1/tag?model={name}&top_k=3", content=data)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["model"] == name and body["duration"] == pytest.approx(2.6, abs=1e-4)
    assert_same_labels(body["labels"], want)
    assert "events" not in body and "chunks" not in body
    form = client.post(f"/v1/tag?model={name}&top_k=3", files={"file": ("c.wav", data)})
    assert form.status_code == 200 and form.json()["labels"] == body["labels"]
    # events and chunk scores as detect and chunk_scores give them
    full = client.post(f"/v1/tag?model={name}&top_k=2&events=1&chunk=0.5", content=data).json()
    events = tagger.detect(path)
    assert [(e["onset"], e["offset"], e["label"]) for e in full["events"]] == [
        (pytest.approx(e.onset, abs=1e-5), pytest.approx(e.offset, abs=1e-5), e.label)
        for e in events]
    chunks = tagger.chunk_scores(path, 0.5)
    assert [(c["start"], c["end"]) for c in full["chunks"]] == [
        (pytest.approx(c.start, abs=1e-5), pytest.approx(c.end, abs=1e-5)) for c in chunks]
    for got, c in zip(full["chunks"], chunks):
        assert_same_labels(got["labels"], tagger.top(c.scores, 2))


def test_model_may_be_left_out_when_one_is_served(make_client, sat, vit):
    data = wav_bytes(noise(1.0))
    one = make_client({"only": sat}).post("/v1/tag", content=data)
    assert one.status_code == 200 and one.json()["model"] == "only"
    two = make_client().post("/v1/tag", content=data)
    assert two.status_code == 400 and "sat" in two.json()["detail"] and "vit" in two.json()["detail"]


def test_unknown_model_is_404_naming_the_served_ones(make_client):
    client = make_client()
    for name in ("nope", "../../etc/passwd", "/tmp/model"):
        r = client.post("/v1/tag", params={"model": name}, content=wav_bytes(noise(0.5)))
        assert r.status_code == 404
        assert name in r.json()["detail"] and "served: sat, vit" in r.json()["detail"]
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/v1/stream", params={"model": name}):
                pass
        assert denied.value.status_code == 404


def test_bad_uploads_get_a_reason_and_the_server_goes_on(make_client, sat):
    client = make_client({"sat": sat}, max_upload_mb=0.05)
    r = client.post("/v1/tag", content=b"this is not audio at all" * 10)
    assert r.status_code == 415 and "cannot decode audio" in r.json()["detail"]
    r = client.post("/v1/tag", content=b"")
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = client.post("/v1/tag", files={"file": ("empty.wav", b"")})
    assert r.status_code == 400 and "empty.wav" in r.json()["detail"]
    r = client.post("/v1/tag", files={"other": ("a.wav", wav_bytes(noise(0.5)))})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = client.post("/v1/tag", content=wav_bytes(noise(3.0)))  # 96 kB > 0.05 MB
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]
    bad = noise(0.5)
    bad[100] = np.nan
    r = client.post("/v1/tag", files={"file": ("nan.wav", wav_bytes(bad, subtype="FLOAT"))})
    assert r.status_code == 422 and "nan.wav" in r.json()["detail"]
    assert "NaN" in r.json()["detail"]
    r = client.post("/v1/tag?top_k=0", content=wav_bytes(noise(0.5)))
    assert r.status_code == 422
    assert client.post("/v1/tag", content=wav_bytes(noise(0.5))).status_code == 200


def test_token_guards_the_api_and_metrics_not_health(make_client, sat):
    client = make_client({"sat": sat}, token="s3cret")
    data = wav_bytes(noise(0.5))
    assert client.get("/healthz").status_code == 200
    assert client.get("/").status_code == 200  # the page asks for the token itself
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        assert client.get("/v1/models", headers=headers).status_code == 401
        assert client.post("/v1/tag", content=data, headers=headers).status_code == 401
        assert client.get("/metrics", headers=headers).status_code == 401
    # every path under /v1/ is guarded, also one the server does not have
    assert client.get("/v1/nothing-here").status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/models", headers=good).status_code == 200
    assert client.post("/v1/tag", content=data, headers=good).status_code == 200
    assert client.get("/metrics", params={"token": "s3cret"}).status_code == 200
    with pytest.raises(WebSocketDenialResponse) as denied:
        with client.websocket_connect("/v1/stream?token=wrong"):
            pass
    assert denied.value.status_code == 401
    with client.websocket_connect("/v1/stream?token=s3cret") as ws:
        start_stream(ws)


# ---- WebSocket streams ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sat", "vit"])
def test_stream_chunks_equal_a_stream_session_on_the_same_samples(make_client, name, request):
    tagger = request.getfixturevalue(name)
    client = make_client()
    x = pcm16(noise(3.4, seed=1))
    session = StreamSession(tagger, 1.0, top_k=3)
    frame = 1600  # 100 ms
    want = [r for i in range(0, len(x), frame) for r in session.push(x[i:i + frame])]
    want += session.flush()
    with client.websocket_connect(f"/v1/stream?model={name}") as ws:
        ready = start_stream(ws, top_k=3, threshold=0.3)
        assert ready["labels"] == LABELS and ready["chunk_seconds"] == 1.0
        for i in range(0, len(x), frame):
            ws.send_bytes(x[i:i + frame].tobytes())
        ws.send_json({"type": "flush"})
        chunks, events = chunks_and_events(ws)
    assert [(c["start"], c["end"]) for c in chunks] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0),
                                                        (3.0, 3.4)]
    for c, r in zip(chunks, want):
        assert (c["start"], c["end"]) == (pytest.approx(r.start), pytest.approx(r.end))
        assert_same_labels(c["labels"], r.labels)
        assert c["latency_ms"] >= c["compute_ms"] > 0
    # the events are the chunk scores through the hysteresis, closed at the flush
    tracker = EventTracker(LABELS, threshold=0.3)
    expect = [e for r in want for e in tracker.update(r.start, r.end, r.scores.tolist())]
    expect += tracker.close(want[-1].end)
    assert [(e["type"], e["label"], e["time"]) for e in events] == [
        (e["type"], e["label"], pytest.approx(e["time"])) for e in expect]
    assert len([e for e in events if e["type"] == "onset"]) == len(
        [e for e in events if e["type"] == "offset"]) >= 1


def test_stream_resamples_and_takes_float_frames_of_any_size(make_client, sat):
    client = make_client()
    x = noise(2.5, seed=2, sr=8000)
    session = StreamSession(sat, 1.0, top_k=2, sample_rate=8000)
    want = session.push(x) + session.flush()
    with client.websocket_connect("/v1/stream?model=sat") as ws:
        ws.send_json({"sample_rate": 8000, "format": "f32le", "top_k": 2})
        assert ws.receive_json()["type"] == "ready"
        for i in range(0, len(x), 777):  # frames that split chunks anywhere
            ws.send_bytes(x[i:i + 777].astype("<f4").tobytes())
        ws.send_json({"type": "flush"})
        chunks, _ = chunks_and_events(ws)
    assert len(chunks) == len(want) == 3
    for c, r in zip(chunks, want):
        assert_same_labels(c["labels"], r.labels)


@pytest.mark.parametrize("first, code, says", [
    ("not json", 1007, "not JSON"),
    ('["a list"]', 1007, "JSON object"),
    ('{"sample_rate": 16000, "format": "mp3"}', 1003, "format 'mp3'"),
    ('{"format": "pcm_s16le"}', 1007, "sample_rate"),
    ('{"sample_rate": 16000, "top_k": 0}', 1007, "top_k"),
    ('{"sample_rate": 16000, "threshold": 2}', 1007, "threshold"),
    ('{"sample_rate": 16000, "sampel_rate": 1}', 1007, "unknown key"),
    (b"\x00\x01", 1008, "first message must be a JSON text"),
])
def test_malformed_first_message_gets_an_error_and_a_close_code(make_client, sat, first, code,
                                                                 says):
    client = make_client({"sat": sat})
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(first) if isinstance(first, bytes) else ws.send_text(first)
        msg, closed = error_and_close(ws)
    assert msg["type"] == "error" and says in msg["message"] and msg["code"] == closed == code
    with client.websocket_connect("/v1/stream") as ws:  # the next client is served
        start_stream(ws)


@pytest.mark.parametrize("frame, fmt, code, says", [
    (b"\x00\x01\x02", "pcm_s16le", 1007, "3 bytes"),
    (b"\x00" * 6, "f32le", 1007, "6 bytes"),
    (np.array([0.1, np.nan], "<f4").tobytes(), "f32le", 1007, "NaN"),
])
def test_bad_frames_close_the_stream_with_a_reason(make_client, sat, frame, fmt, code, says):
    client = make_client({"sat": sat})
    with client.websocket_connect("/v1/stream") as ws:
        start_stream(ws, format=fmt)
        ws.send_bytes(frame)
        msg, closed = error_and_close(ws)
    assert says in msg["message"] and closed == code
    with client.websocket_connect("/v1/stream") as ws:
        start_stream(ws)
        ws.send_bytes(pcm16(noise(1.0)).tobytes())
        assert next_chunk(ws)["type"] == "chunk"


def test_unknown_text_message_after_the_first_closes_with_policy_code(make_client, sat):
    with make_client({"sat": sat}).websocket_connect("/v1/stream") as ws:
        start_stream(ws)
        ws.send_text('{"type": "rewind"}')
        msg, closed = error_and_close(ws)
    assert "rewind" in msg["message"] and closed == 1008


def test_stream_limits(make_client, sat):
    client = make_client({"sat": sat}, max_streams=1, max_stream_minutes=1.5 / 60)
    with client.websocket_connect("/v1/stream") as ws:
        start_stream(ws)
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/v1/stream"):
                pass
        assert denied.value.status_code == 503
        ws.send_bytes(pcm16(noise(1.0)).tobytes())
        assert next_chunk(ws)["type"] == "chunk"
        ws.send_bytes(pcm16(noise(1.0)).tobytes())  # 2 s of audio > 1.5 s
        assert next_chunk(ws)["type"] == "chunk"
        ws.send_bytes(pcm16(noise(0.1)).tobytes())
        msg, closed = error_and_close(ws)
    assert "--max-stream-minutes" in msg["message"] and closed == 1008
    with client.websocket_connect("/v1/stream") as ws:  # the slot is free again
        start_stream(ws)


def test_metrics_count_requests_and_chunks(make_client, sat):
    client = make_client({"sat": sat})
    client.post("/v1/tag", content=wav_bytes(noise(0.5)))
    client.post("/v1/tag", content=b"junk")
    with client.websocket_connect("/v1/stream") as ws:
        start_stream(ws)
        ws.send_bytes(pcm16(noise(2.0)).tobytes())
        next_chunk(ws), next_chunk(ws)
    text = client.get("/metrics").text
    assert 'earmark_http_requests_total{path="/v1/tag",status="200"} 1.0' in text
    assert 'earmark_http_requests_total{path="/v1/tag",status="415"} 1.0' in text
    assert 'earmark_stream_chunks_total{model="sat"} 2.0' in text
    assert "earmark_stream_chunk_latency_seconds_count 2.0" in text
    assert "earmark_streams_open 0.0" in text


def test_the_page_is_served(make_client):
    page = make_client().get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "audioWorklet" in page.text and "v1/stream" in page.text and "v1/tag" in page.text


# ---- many streams in one batch ------------------------------------------------------------------


def test_chunks_due_together_are_scored_in_one_batch(sat):
    from earmark.serve.batcher import InferenceWorker

    clips = [pcm16(noise(1.0, seed=s)) for s in range(8)]
    alone = [sat.stream(1.0).push(x)[0] for x in clips]
    sessions = [sat.stream(1.0) for _ in clips]
    worker = InferenceWorker(max_batch=6).start()

    async def run():
        # the worker is busy with a whole-file job while every stream's chunk arrives
        gate = threading.Event()
        busy = asyncio.ensure_future(worker.call(gate.wait, 10))
        await asyncio.sleep(0.1)
        chunks = [asyncio.ensure_future(worker.score(s.feed(x)))
                  for s, x in zip(sessions, clips)]
        await asyncio.sleep(0.1)
        gate.set()
        return await asyncio.gather(busy, *chunks)

    try:
        _, *got = asyncio.run(run())
    finally:
        worker.close()
    assert worker.largest == 6 and worker.batches == 2  # max_batch 6: rounds of 6 and 2
    for scored, a in zip(got, alone):
        [r] = scored.results
        torch.testing.assert_close(r.scores, a.scores, atol=1e-5, rtol=0)


def test_worker_errors_reach_the_caller_and_it_goes_on():
    from earmark.serve.batcher import InferenceWorker

    worker = InferenceWorker().start()

    def fail():
        raise ValueError("bad clip")

    async def run():
        with pytest.raises(ValueError, match="bad clip"):
            await worker.call(fail)
        return await worker.call(lambda a, b: a + b, 2, 3)

    try:
        assert asyncio.run(run()) == 5
    finally:
        worker.close()


# ---- debouncing ---------------------------------------------------------------------------------


def test_hysteresis_gives_one_onset_and_one_offset_per_sound():
    scores = [0.1, 0.55, 0.45, 0.6, 0.35, 0.52, 0.2, 0.1, 0.7, 0.9]  # one label, 1 s chunks
    tracker = EventTracker(["dog"], threshold=0.5, release=0.3)
    out = [m for i, s in enumerate(scores) for m in tracker.update(i, i + 1, [s])]
    out += tracker.close(len(scores))
    assert [(m["type"], m["time"], m["score"]) for m in out] == [
        ("onset", 1, 0.55), ("offset", 6, 0.6),  # dips to 0.45 and 0.35 do not end it
        ("onset", 8, 0.7), ("offset", 10, 0.9)]  # still open at the end: closed there
    # thresholding each chunk alone would have fired four onsets (rises through 0.5)
    rises = sum(b >= 0.5 > a for a, b in zip([0.0] + scores, scores))
    assert rises == 4 > len([m for m in out if m["type"] == "onset"])
    # labels are independent and the default release sits below the threshold
    t = EventTracker(["a", "b"], threshold=0.5)
    assert t.release < 0.5
    assert [m["label"] for m in t.update(0, 1, [0.9, 0.1]) + t.update(1, 2, [0.9, 0.8])] == [
        "a", "b"]
    with pytest.raises(ValueError, match="release"):
        EventTracker(["a"], threshold=0.5, release=0.7)


def test_stream_events_follow_the_offline_detectors_hysteresis():
    from earmark.infer.events import DetectionConfig, frames_to_events

    # the same scores, one per 1 s chunk, live and offline: events end at the same chunks
    # with the same peaks; live onsets come where the score reached the threshold, offline
    # ones where the run above the release level began
    scores = [0.1, 0.35, 0.55, 0.45, 0.6, 0.2, 0.4, 0.1, 0.7, 0.9]
    tracker = EventTracker(["dog"], threshold=0.5, release=0.3)
    live = [m for i, s in enumerate(scores) for m in tracker.update(i, i + 1, [s])]
    live += tracker.close(len(scores))
    offline = frames_to_events(np.array(scores)[:, None], ["dog"], 1.0,
                               DetectionConfig(threshold=0.5, hysteresis=0.3))
    assert [(e.onset, e.offset, e.score) for e in offline] == [(1, 5, 0.6), (8, 10, 0.9)]
    assert [(m["type"], m["time"], m["score"]) for m in live] == [
        ("onset", 2, 0.55), ("offset", 5, 0.6), ("onset", 8, 0.7), ("offset", 10, 0.9)]


def test_json_messages_are_plain_json(make_client, sat):
    # every message a client gets parses with a strict JSON parser (no NaN, no numpy types)
    with make_client({"sat": sat}).websocket_connect("/v1/stream") as ws:
        start_stream(ws, threshold=0.05)
        ws.send_bytes(pcm16(noise(1.0)).tobytes())
        ws.send_json({"type": "flush"})
        def refuse(constant):
            raise AssertionError(f"{constant} in a message")

        while True:
            msg = json.loads(ws.receive_text(), parse_constant=refuse)
            if msg["type"] == "flushed":
                break
