"""Small taggers and a running app for the serving tests (FastAPI's test client)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

import earmark
from earmark.infer.tagger import Tagger

pytest.importorskip("fastapi", reason="serving needs earmark[serve]")
pytest.importorskip("httpx", reason="FastAPI's test client needs httpx")

SR = 16000
LABELS = ["dog", "rain", "siren", "speech"]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(threads)


def small_tagger(name: str, seed: int, **kw) -> Tagger:
    torch.manual_seed(seed)
    model = earmark.create_model(name, len(LABELS), embed_dim=48, num_heads=3, **kw)
    return Tagger(model.eval(), {"labels": LABELS, "name": f"{name}-test"})


@pytest.fixture(scope="session")
def sat() -> Tagger:
    return small_tagger("sat-tiny", 0, depth=2, chunk_seconds=1.0)


@pytest.fixture(scope="session")
def vit() -> Tagger:
    return small_tagger("vit-tiny", 1, depth=1, clip_seconds=2.0)


def noise(seconds: float, seed: int = 0, amp: float = 0.2, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(round(seconds * sr))) * amp
    t = np.arange(x.size) / sr
    x += 0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t)  # something for the model to hear
    return np.clip(x, -1, 1).astype(np.float32)


def wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples as the int16 a client sends (and the float it decodes to)."""
    return np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")


@pytest.fixture
def make_client(sat, vit):
    from fastapi.testclient import TestClient

    from earmark.serve import ServeOptions, create_app

    clients = []

    def make(models=None, **options):
        app = create_app(models or {"sat": sat, "vit": vit}, ServeOptions(**options))
        client = TestClient(app)
        client.__enter__()  # runs the lifespan: the inference worker starts
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


class RunningServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread, for clients that
    need a real socket (a browser, the benchmark)."""

    def __init__(self, app):
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
