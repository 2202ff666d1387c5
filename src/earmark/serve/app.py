"""``earmark serve``: taggers over HTTP and WebSocket (FastAPI + uvicorn, extra ``serve``).

    >>> import earmark
    >>> from earmark.models.directory import save_model_dir
    >>> from earmark.serve import create_app, load_models
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> save_model_dir(model, "fsdd/model", ["dog", "rain", "siren"])
    PosixPath('fsdd/model')
    >>> models = load_models(["fsdd/model"])                     # named after the run: fsdd
    >>> app = create_app(models)                                 # then: uvicorn.run(app)
    >>> sorted(models), models["fsdd"].labels
    (['fsdd'], ['dog', 'rain', 'siren'])

Endpoints (see README, "Serving"):

- ``GET /``: a web page that listens through the microphone and tags dropped files;
- ``GET /healthz``; ``GET /metrics`` (Prometheus text);
- ``GET /v1/models``; ``POST /v1/tag?model=NAME&top_k=K[&events=1][&chunk=S]`` with the
  audio file as the body or as the multipart field ``file``;
- ``WS /v1/stream?model=NAME``: a JSON configuration first, then binary PCM frames of any
  size; one JSON message per chunk and debounced onset / offset messages back.

Nothing in a request names a file on disk: models are chosen by name among those loaded at
start, uploads are decoded in memory.
"""


import asyncio
import hmac
import json
import logging
import math
import signal
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from earmark.audio.io import check_samples, iter_array_blocks
from earmark.audio.packed import decode_bytes
from earmark.errors import AudioError, EarmarkError, HeaderError, TooLongError
from earmark.infer.chunks import iter_chunk_scores, score_chunks
from earmark.infer.detect import detect_steps
from earmark.infer.stream import StreamSession
from earmark.infer.tagger import Tagger
from earmark.serve.batcher import DeadlineExceeded, InferenceWorker, ShuttingDown
from earmark.serve.events import EventTracker
from earmark.steps import Steps

FORMATS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
CONFIG_KEYS = {"sample_rate", "format", "top_k", "threshold", "release"}
MIN_CHUNK_SECONDS = 0.1  # no /v1/tag chunk is shorter, whatever the model
RESAMPLE_BLOCK_SECONDS = 60.0  # an upload is mixed down and resampled this much at a time
SHUTDOWN_SECONDS = 3  # uvicorn's wait for connections once the work has been dropped
TIME_LIMIT = "stream time limit reached (--max-stream-minutes)"
# WebSocket close codes (RFC 6455, 7.4.1)
NORMAL, GOING_AWAY, UNSUPPORTED, BAD_DATA, POLICY = 1000, 1001, 1003, 1007, 1008
INTERNAL, TRY_LATER = 1011, 1013
log = logging.getLogger("earmark.serve")


class ServeError(EarmarkError):
    """A request the server refuses: ``status`` is the HTTP status, ``code`` the WebSocket
    close code, ``message`` the reason sent to the client."""

    def __init__(self, status: int, message: str, code: int = POLICY):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class ServeOptions:
    """Limits and settings of a server (the options of ``earmark serve``)."""

    token: str | None = None  # bearer token required on /v1/*, /metrics (docs off)
    max_streams: int = 64  # open (configured) WebSocket streams at once
    max_upload_mb: float = 50.0  # /v1/tag request bodies
    max_stream_minutes: float = 60.0  # audio (or wall time) per stream
    chunk_seconds: float | None = None  # chunk of full-context models (streaming: their own)
    max_batch: int = 64  # chunks per model call
    max_request_seconds: float = 60.0  # wall time of one /v1/tag request, waiting included
    max_chunks: int = 2000  # chunks per /v1/tag request (chunk=S)
    max_upload_minutes: float = 30.0  # audio per /v1/tag request
    max_uploads: int = 4  # /v1/tag requests read, decoded and scored at once; others wait
    max_unconfigured: int = 8  # WebSocket connections that have not sent their configuration
    config_seconds: float = 5.0  # time a new WebSocket has to send its configuration

    def __post_init__(self):
        for name in ("max_streams", "max_upload_mb", "max_stream_minutes", "max_batch",
                     "max_request_seconds", "max_chunks", "max_upload_minutes", "max_uploads",
                     "max_unconfigured", "config_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty")


@dataclass
class ServedModel:
    name: str
    tagger: Tagger
    chunk_seconds: float

    @property
    def min_chunk_seconds(self) -> float:
        """The shortest ``chunk`` an upload may ask for: the model's shortest useful window
        (one patch of frames), and never under ``MIN_CHUNK_SECONDS``. Every chunk costs a
        model call, so a shorter one would only multiply the work."""
        shortest = getattr(self.tagger.model, "min_samples", 0) / self.tagger.sample_rate
        return round(max(MIN_CHUNK_SECONDS, shortest), 3)

    def describe(self) -> dict:
        model = self.tagger.model
        return {"name": self.name, "labels": self.tagger.labels,
                "sample_rate": self.tagger.sample_rate, "chunk_seconds": self.chunk_seconds,
                "min_chunk_seconds": self.min_chunk_seconds,
                "streaming": bool(model.is_streaming), "multi_label": self.tagger.multi_label,
                "family": self.tagger.config.get("name") or type(model).__name__}


def load_models(specs: list[str], trust_checkpoint: bool = False) -> dict[str, Tagger]:
    """``PATH`` or ``NAME=PATH`` -> {name: Tagger}; a model's name defaults to its directory's
    name (the run directory's for ``RUN/model``)."""
    from earmark.infer.tagger import load

    out: dict[str, Tagger] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            name, path = _default_name(Path(spec)), spec
        if name in out:
            raise EarmarkError(f"two models named {name!r}; name them with NAME=PATH")
        out[name] = load(path, trust_checkpoint=trust_checkpoint)
    if not out:
        raise EarmarkError("no model to serve")
    return out


def _default_name(path: Path) -> str:
    path = path.resolve()
    if path.suffix in (".ckpt", ".onnx"):
        return path.stem
    return path.parent.name if path.name == "model" and path.parent.name else path.name


# ---- metrics ----------------------------------------------------------------------------------


class Metrics:
    """Prometheus counters of one app (its own registry, so apps never share them)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("earmark_http_requests", "HTTP requests", ["path", "status"],
                                registry=r)
        self.request_seconds = Histogram("earmark_http_request_seconds",
                                         "HTTP request latency", ["path"], registry=r)
        self.streams_open = Gauge("earmark_streams_open", "WebSocket streams open",
                                  registry=r)
        self.streams_waiting = Gauge("earmark_streams_unconfigured",
                                     "WebSocket connections yet to send their configuration",
                                     registry=r)
        self.streams = Counter("earmark_streams", "WebSocket streams, by how they ended",
                               ["end"], registry=r)
        self.chunks = Counter("earmark_stream_chunks", "stream chunks scored", ["model"],
                              registry=r)
        self.chunk_seconds = Histogram(
            "earmark_stream_chunk_latency_seconds",
            "from the frame that completed a chunk to its message",
            buckets=(.005, .01, .02, .03, .05, .075, .1, .2, .5, 1.0, 2.0), registry=r)
        self.audio_seconds = Counter("earmark_stream_audio_seconds",
                                     "seconds of audio received on streams", registry=r)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# ---- the app ----------------------------------------------------------------------------------


class StreamHub:
    """The open streams and the connections still to send their configuration, so that a
    shutting-down server can say goodbye to each."""

    def __init__(self):
        self.open: set = set()  # configured streams: they hold the --max-streams slots
        self.waiting: set = set()  # accepted, configuration not yet received
        self.closing = False

    async def close_all(self, reason: str) -> None:
        self.closing = True
        for ws in list(self.open | self.waiting):
            try:
                await ws.send_json({"type": "closing", "reason": reason})
                await ws.close(GOING_AWAY, reason)
            except Exception:  # noqa: BLE001 - the client is already gone
                pass


class Guard:
    """ASGI middleware in front of every HTTP request: the bearer token on the guarded
    paths, and each request counted in /metrics by path and status, a failure that escapes
    the app as the 500 it becomes, a request whose client left as 499."""

    def __init__(self, app, options: ServeOptions, metrics: Metrics):
        self.app, self.options, self.metrics = app, options, metrics

    async def __call__(self, scope, receive, send):
        from fastapi.responses import JSONResponse
        from starlette.datastructures import Headers, QueryParams

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, path = time.perf_counter(), scope["path"]
        status = [500]

        async def sent(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if path.startswith(GUARDED) and not authorized(
                    self.options, Headers(scope=scope),
                    QueryParams(scope.get("query_string", b""))):
                denied = JSONResponse({"detail": "missing or wrong bearer token"},
                                      status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await denied(scope, receive, sent)
            else:
                await self.app(scope, receive, sent)
        except Exception:
            status[0] = 500  # what the server's error handler answers
            raise
        finally:
            label = path if path in _PATHS else "other"  # a bounded set of metric labels
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.request_seconds.labels(label).observe(time.perf_counter() - t0)


def create_app(models: dict[str, Tagger], options: ServeOptions | None = None,
               worker: InferenceWorker | None = None):
    """The FastAPI app serving ``models`` ({name: Tagger}). Model calls go to ``worker``
    (run by the caller, see :func:`serve`), else to a worker thread the app starts and stops
    with its lifespan."""
    from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    options = options or ServeOptions()
    if not models:
        raise EarmarkError("no model to serve")
    served = {name: ServedModel(name, t, _chunk_seconds(t, options)) for name, t in
              models.items()}
    for m in served.values():  # trace and run the model now, not in the first client's chunk
        warm_up(m)
    metrics, hub = Metrics(), StreamHub()
    metrics.streams_open.set_function(lambda: len(hub.open))
    metrics.streams_waiting.set_function(lambda: len(hub.waiting))
    own = worker is None
    if own:
        worker = InferenceWorker(options.max_batch)
    uploads = asyncio.Semaphore(options.max_uploads)

    @asynccontextmanager
    async def lifespan(app):
        if own:
            worker.start()
        yield
        await hub.close_all("server shutting down")
        if own:
            worker.close()

    # with a token, the API's description is not public either
    docs = {} if options.token is None else {"docs_url": None, "openapi_url": None}
    app = FastAPI(title="earmark", lifespan=lifespan, redoc_url=None, **docs)
    app.state.options, app.state.hub, app.state.metrics = options, hub, metrics
    app.state.models, app.state.worker = served, worker
    app.add_middleware(Guard, options=options, metrics=metrics)

    def lookup(name: str | None) -> ServedModel:
        if name is None:
            if len(served) == 1:
                return next(iter(served.values()))
            raise ServeError(400, f"several models are served; choose one with model=NAME: "
                                  f"{', '.join(served)}")
        if name not in served:
            raise ServeError(404, f"unknown model {name!r}; served: {', '.join(served)}")
        return served[name]

    @app.exception_handler(ServeError)
    async def serve_error(request, err: ServeError):
        return JSONResponse({"detail": err.message}, status_code=err.status)

    page_html = resources.files("earmark.serve").joinpath("page.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(page_html)

    @app.get("/healthz")
    async def healthz():
        if options.token is not None:  # no model names or load to anyone who asks
            return {"status": "ok"}
        return {"status": "ok", "models": list(served), "streams": len(hub.open)}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"models": [m.describe() for m in served.values()]}

    @app.post("/v1/tag")
    async def tag(request: Request, model: str | None = None,
                  top_k: int = Query(5, ge=1, le=10000), events: bool = False,
                  chunk: float | None = Query(None, gt=0, le=3600)):
        deadline = time.monotonic() + options.max_request_seconds
        m = lookup(model)
        if chunk is not None and chunk < m.min_chunk_seconds:
            raise ServeError(422, f"chunk={chunk:g} s is shorter than {m.min_chunk_seconds:g} s, "
                                  f"the shortest window of model {m.name!r}")
        return await _tag_upload(request, m, options, uploads, worker, deadline,
                                 dict(top_k=top_k, events=events, chunk=chunk))

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket, model: str | None = None):
        try:
            if not authorized(options, ws.headers, ws.query_params):
                raise ServeError(401, "missing or wrong bearer token")
            m = lookup(model)
            if hub.closing:
                raise ServeError(503, "server shutting down", GOING_AWAY)
            _check_stream_slot(hub, options)
            if len(hub.waiting) >= options.max_unconfigured:
                raise ServeError(503, f"{options.max_unconfigured} connections are waiting to "
                                      "send their configuration, the most this server takes "
                                      "(--max-unconfigured); try again later", TRY_LATER)
        except ServeError as err:
            await _deny(ws, err)
            metrics.streams.labels("refused").inc()
            return
        await ws.accept()
        end = "closed"
        try:
            hub.waiting.add(ws)
            try:
                session, st = await _configure(ws, m, options)
            finally:
                hub.waiting.discard(ws)
            _check_stream_slot(hub, options)  # others may have taken the slots meanwhile
            hub.open.add(ws)
            await ws.send_json({"type": "ready", "model": m.name,
                                "sample_rate": m.tagger.sample_rate,
                                "chunk_seconds": m.chunk_seconds, "labels": m.tagger.labels})
            await _run_stream(ws, m, session, st, options, worker, metrics)
        except ServeError as err:
            end = "error"
            await _close(ws, err.code, err.message)
        except (_Gone, WebSocketDisconnect):
            pass  # the client went away: "closed"
        except Exception as err:  # noqa: BLE001 - one stream's failure is not the server's
            if hub.closing:
                end = "shutdown"  # closed under it by close_all
            else:
                end = "error"
                log.exception("stream on model %s failed", m.name)
                await _close(ws, INTERNAL, f"internal error: {type(err).__name__}")
        finally:
            hub.open.discard(ws)
            metrics.streams.labels(end).inc()

    return app


GUARDED = ("/v1/", "/metrics")  # paths that need the token, when there is one


def authorized(options: ServeOptions, headers, query) -> bool:
    """Whether a request carries the server's token (``Authorization: Bearer TOKEN`` or
    ``?token=``); always, when the server has none."""
    if options.token is None:
        return True
    given = query.get("token") or ""
    auth = headers.get("authorization") or ""
    if auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode(), options.token.encode())


def _check_stream_slot(hub: StreamHub, options: ServeOptions) -> None:
    if len(hub.open) >= options.max_streams:
        raise ServeError(503, f"{options.max_streams} streams are open, the most this server "
                              "takes (--max-streams); try again later", TRY_LATER)


_PATHS = {"/", "/healthz", "/metrics", "/v1/models", "/v1/tag"}


def warm_up(m: ServedModel) -> None:
    """A few chunks of silence through a stream (one stream and two at once) and a short
    clip, so that tracing and the first slow calls happen before any client waits."""
    silence = np.zeros(int(round(m.chunk_seconds * m.tagger.sample_rate)), np.float32)
    sessions = [StreamSession(m.tagger, m.chunk_seconds) for _ in range(2)]
    for _ in range(3):
        sessions[0].take(score_chunks(sessions[0].feed(silence)))
        scored = score_chunks([p for s in sessions for p in s.feed(silence)])
        for s in sessions:
            s.take(scored)
    m.tagger.scores(silence)


def _chunk_seconds(tagger: Tagger, options: ServeOptions) -> float:
    """``--chunk`` for a full-context model; a streaming model streams in its own chunk."""
    if options.chunk_seconds and not tagger.model.is_streaming:
        return float(options.chunk_seconds)
    return tagger.chunk_seconds


# ---- /v1/tag ----------------------------------------------------------------------------------


async def _tag_upload(request, m: ServedModel, options: ServeOptions,
                      uploads: asyncio.Semaphore, worker: InferenceWorker, deadline: float,
                      params: dict) -> dict:
    """One /v1/tag request: wait for one of the ``--max-uploads`` turns, read the body, then
    score it in the worker piece by piece, all within ``deadline``."""
    from starlette.requests import ClientDisconnect

    budget = (f"the request took longer than {options.max_request_seconds:g} s "
              "(--max-request-seconds); send a shorter file or try again later")
    try:
        await asyncio.wait_for(uploads.acquire(), max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise ServeError(503, budget) from None
    try:
        data, name = await asyncio.wait_for(_read_upload(request, options.max_upload_mb),
                                            max(0.0, deadline - time.monotonic()))
        job = _upload_steps(m, data, name, options, **params)
        del data  # the job holds the bytes only until they are decoded
        return await _unless_gone(request, worker.steps(job, deadline))
    except (asyncio.TimeoutError, DeadlineExceeded):
        raise ServeError(503, budget) from None
    except ShuttingDown:
        raise ServeError(503, "server shutting down") from None
    except ClientDisconnect:  # gone while sending the body
        raise ServeError(499, "the client closed the connection before the answer") from None
    finally:
        uploads.release()


async def _unless_gone(request, work) -> dict:
    """The result of coroutine ``work``, unless the client disconnects first: then the work
    is cancelled (the worker drops it at its next piece) and the request ends as 499."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        raise ServeError(499, "the client closed the connection before the answer")
    return task.result()


async def _disconnected(request) -> None:
    """Returns when the client has gone. Only once the body has been read: the next message
    the server gets for this request is then the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_upload(request, max_mb: float) -> tuple[bytes, str]:
    """The uploaded file's bytes and a name for messages (never used as a path)."""
    from fastapi import HTTPException
    from starlette.requests import Request

    limit = int(max_mb * 1024 * 1024)
    too_big = HTTPException(413, f"upload larger than {max_mb:g} MB (--max-upload-mb)")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:
        raise too_big
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit + 64 * 1024:  # room for multipart headers
            raise too_big
    data, name = bytes(body), "upload"
    del body
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async def replay():
            return {"type": "http.request", "body": data, "more_body": False}

        form = await Request(request.scope, replay).form(max_part_size=limit + 1)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "multipart upload without a file field named 'file'")
        data, name = await upload.read(), f"upload {upload.filename or 'file'!r}"
        await form.close()
    if len(data) > limit:
        raise too_big
    if not data:
        raise HTTPException(400, f"{name}: empty request body (0 bytes of audio)")
    return data, name


def _upload_steps(m: ServedModel, data: bytes, name: str, options: ServeOptions, top_k: int,
                  events: bool, chunk: float | None) -> Steps[dict]:
    """The answer to one upload, computed in pieces the worker interleaves with streams:
    decoding, each minute of resampling, and each model call."""
    tagger = m.tagger
    try:
        x, sr = decode_bytes(data, name, max_seconds=options.max_upload_minutes * 60.0)
    except TooLongError as err:
        raise ServeError(422, f"{err} (--max-upload-minutes)") from None
    except HeaderError as err:
        raise ServeError(422, str(err)) from None
    except AudioError as err:
        raise ServeError(415, str(err)) from None
    del data
    try:
        check_samples(name, x, 0, sr)
    except AudioError as err:
        raise ServeError(422, str(err)) from None
    duration = x.shape[0] / sr
    if chunk and math.ceil(duration / chunk - 1e-9) > options.max_chunks:
        raise ServeError(422, f"chunk={chunk:g} s cuts this {duration:.1f} s upload into "
                              f"{math.ceil(duration / chunk - 1e-9)} chunks; at most "
                              f"{options.max_chunks} are scored per request (--max-chunks)")
    yield
    wave = yield from _waveform_steps(x, sr, tagger.sample_rate)
    del x
    out = {"model": m.name, "duration": round(duration, 6),
           "labels": _labels(tagger.top((yield from tagger.score_steps(wave)), top_k))}
    if events:
        found = yield from detect_steps(tagger, wave, block_seconds=tagger.model.clip_seconds)
        out["events"] = [{"onset": round(e.onset, 6), "offset": round(e.offset, 6),
                          "label": e.label, "score": None if e.score is None else
                          round(float(e.score), 6)} for e in found]
    if chunk:
        out["chunks"] = []
        for c in iter_chunk_scores(tagger, wave, chunk):
            out["chunks"].append({"start": round(c.start, 6), "end": round(c.end, 6),
                                  "labels": _labels(tagger.top(c.scores, top_k))})
            yield
    return out


def _waveform_steps(x: np.ndarray, sr: int, rate: int) -> Steps[torch.Tensor]:
    """Decoded samples (frames, channels) -> mono float32 (N,) at ``rate``, as
    :meth:`Tagger.waveform` makes it, ``RESAMPLE_BLOCK_SECONDS`` at a time."""
    blocks = []
    for block in iter_array_blocks(x, sr, RESAMPLE_BLOCK_SECONDS, rate):
        blocks.append(block)
        yield
    return torch.cat(blocks)


def _labels(pairs) -> list[dict]:
    return [{"label": label, "score": round(float(score), 6)} for label, score in pairs]


# ---- /v1/stream -------------------------------------------------------------------------------


class _Gone(Exception):
    """The client closed the socket."""


async def _deny(ws, err: ServeError) -> None:
    """Refuse a WebSocket before accepting it: an HTTP response where the server can send
    one (status and reason), else a close with the error's code."""
    from fastapi.responses import JSONResponse

    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse({"detail": err.message},
                                                   status_code=err.status))
    else:
        await ws.close(err.code, err.message[:120])


async def _close(ws, code: int, reason: str) -> None:
    try:
        await ws.send_json({"type": "error", "code": code, "message": reason})
        await ws.close(code, reason[:120])  # close reasons hold at most 123 bytes
    except Exception:  # noqa: BLE001 - already closed by the client
        pass


async def _receive(ws, timeout: float, late: str) -> dict:
    try:
        msg = await asyncio.wait_for(ws.receive(), timeout)
    except asyncio.TimeoutError:
        raise ServeError(408, late, POLICY) from None
    if msg["type"] == "websocket.disconnect":
        raise _Gone
    return msg


def parse_config(text: str | None, labels: list[str]) -> dict:
    """The first message of a stream -> its settings; ServeError saying what is wrong."""
    if text is None:
        raise ServeError(400, "the first message must be a JSON text message with sample_rate "
                              "and format, before any audio", POLICY)
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ServeError(400, f"first message is not JSON: {err}", BAD_DATA) from None
    if not isinstance(cfg, dict):
        raise ServeError(400, "first message must be a JSON object", BAD_DATA)
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise ServeError(400, f"unknown key(s) {sorted(unknown)} in the first message; "
                              f"known: {sorted(CONFIG_KEYS)}", BAD_DATA)
    fmt = cfg.get("format", "pcm_s16le")
    if fmt not in FORMATS:
        raise ServeError(400, f"format {fmt!r} is not one of {', '.join(FORMATS)}", UNSUPPORTED)
    rate, top_k = cfg.get("sample_rate"), cfg.get("top_k", 5)
    threshold, release = cfg.get("threshold", 0.5), cfg.get("release")
    if not (isinstance(rate, int) and not isinstance(rate, bool) and 1000 <= rate <= 384000):
        raise ServeError(400, f"sample_rate must be an integer in 1000-384000 Hz, got {rate!r}",
                         BAD_DATA)
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise ServeError(400, f"top_k must be a positive integer, got {top_k!r}", BAD_DATA)
    try:
        tracker = EventTracker(labels, _number(threshold, "threshold"),
                               None if release is None else _number(release, "release"))
    except ValueError as err:
        raise ServeError(400, str(err), BAD_DATA) from None
    return {"sample_rate": rate, "format": fmt, "top_k": min(top_k, len(labels)),
            "tracker": tracker}


def _number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number, got {v!r}")
    return float(v)


@dataclass
class _StreamState:
    tracker: EventTracker
    dtype: np.dtype
    rate: int  # the client's sample rate
    started: float = field(default_factory=time.monotonic)
    audio: float = 0.0  # seconds received


async def _configure(ws, m: ServedModel, options: ServeOptions
                     ) -> tuple[StreamSession, _StreamState]:
    """A new connection's first message, within ``--config-seconds``: its session."""
    msg = await _receive(ws, options.config_seconds,
                         f"no configuration message within {options.config_seconds:g} s "
                         "(--config-seconds)")
    cfg = parse_config(msg.get("text"), m.tagger.labels)
    session = StreamSession(m.tagger, m.chunk_seconds, top_k=cfg["top_k"],
                            sample_rate=cfg["sample_rate"])
    return session, _StreamState(cfg["tracker"], FORMATS[cfg["format"]], cfg["sample_rate"])


async def _run_stream(ws, m: ServedModel, session: StreamSession, st: _StreamState,
                      options: ServeOptions, worker: InferenceWorker,
                      metrics: Metrics) -> None:
    limit = options.max_stream_minutes * 60.0
    while True:
        left = limit - (time.monotonic() - st.started)
        if left <= 0 or st.audio > limit:
            raise ServeError(408, TIME_LIMIT, POLICY)
        msg = await _receive(ws, left, TIME_LIMIT)
        received = time.perf_counter()
        if msg.get("bytes") is not None:
            x = _frame(msg["bytes"], st)
            st.audio += x.shape[0] / st.rate
            metrics.audio_seconds.inc(x.shape[0] / st.rate)
            try:
                pending = session.feed(x)
            except AudioError as err:
                raise ServeError(400, err.reason, BAD_DATA) from None
            results = session.take(await worker.score(pending))
            await _send_results(ws, m, st.tracker, results, received, metrics)
        else:
            _expect_flush(msg.get("text"))
            results = session.take(await worker.score(session.finish()))
            await _send_results(ws, m, st.tracker, results, received, metrics)
            end = results[-1].end if results else session.time
            for e in st.tracker.close(end):
                await ws.send_json(e)
            session.reset()
            await ws.send_json({"type": "flushed", "time": round(end, 6)})


def _frame(data: bytes, st: _StreamState) -> np.ndarray:
    width = st.dtype.itemsize
    if len(data) % width:
        raise ServeError(400, f"a binary frame of {len(data)} bytes is not a whole number of "
                              f"{width}-byte samples", BAD_DATA)
    return np.frombuffer(data, dtype=st.dtype)


def _expect_flush(text: str | None) -> None:
    """The one text message a stream takes after its configuration: {"type": "flush"}."""
    try:
        msg = json.loads(text or "")
    except json.JSONDecodeError:
        msg = None
    if not isinstance(msg, dict) or msg.get("type") != "flush":
        raise ServeError(400, f"unknown text message {str(text)[:60]!r}: after the first "
                              'message only audio frames and {"type": "flush"} are taken',
                         POLICY)


async def _send_results(ws, m: ServedModel, tracker: EventTracker, results, received: float,
                        metrics: Metrics) -> None:
    for r in results:
        latency = time.perf_counter() - received
        await ws.send_json({"type": "chunk", "start": round(r.start, 6), "end": round(r.end, 6),
                            "labels": _labels(r.labels),
                            "latency_ms": round(latency * 1000.0, 3),
                            "compute_ms": round(r.latency_ms, 3)})
        metrics.chunks.labels(m.name).inc()
        metrics.chunk_seconds.observe(latency)
        for e in tracker.update(r.start, r.end, r.scores.tolist()):
            await ws.send_json(e)


# ---- running ----------------------------------------------------------------------------------


def serve(models: dict[str, Tagger], host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions | None = None, log_level: str = "info") -> None:
    """Run the server until SIGINT / SIGTERM. uvicorn's event loop runs in a thread and the
    models in this (the main) thread. On shutdown every open stream gets a
    ``{"type": "closing"}`` message and a close with code 1001 (going away); uploads in
    flight end at their next piece of work with a 503; then this returns."""
    import threading

    import uvicorn

    options = options or ServeOptions()
    worker = InferenceWorker(options.max_batch)
    app = create_app(models, options, worker)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await app.state.hub.close_all("server shutting down")
            worker.close()  # uploads in flight end at their next piece with a 503
            await super().shutdown(sockets)

    # what is left after the worker stopped is answers on their way out: seconds at most
    server = Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                   timeout_graceful_shutdown=SHUTDOWN_SECONDS))
    loop = threading.Thread(target=server.run, name="earmark-http", daemon=True)

    def stop(sig, frame):
        if server.should_exit:  # a second signal: do not wait for open requests
            server.force_exit = True
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        loop.start()
        worker.run(until=lambda: not loop.is_alive())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.should_exit = True
        loop.join(timeout=30)
    if not server.started:
        raise EarmarkError(f"the server could not start on {host}:{port} (see the log above)")
