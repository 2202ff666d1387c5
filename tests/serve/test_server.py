"""The server over real sockets: `earmark serve` stopped by SIGTERM, and the web page
listening through a (fake) microphone in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
import torch

import earmark
from earmark.infer.tagger import Tagger
from earmark.models.directory import save_model_dir
from tests.serve.conftest import SR, RunningServer

TONES = {"low": 300.0, "mid": 1000.0, "high": 3000.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"server at {url} not healthy within {seconds:g} s")


def test_sigterm_closes_open_streams_with_a_message_and_exits(tmp_path):
    client = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import ConnectionClosed
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 3, depth=1, embed_dim=48, num_heads=3,
                                 chunk_seconds=1.0)
    save_model_dir(model.eval(), tmp_path / "run" / "model", list(TONES))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "earmark", "serve", str(tmp_path / "run" /
                                                                          "model"),
                             "--port", str(port), "--threads", "1", "--log-level", "warning"],
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
            assert [m["name"] for m in json.load(r)["models"]] == ["run"]  # the run's name
        with client.connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=10) as ws:
            ws.send(json.dumps({"sample_rate": SR, "format": "pcm_s16le", "threshold": 1.0}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
            ws.send(np.zeros(SR, "<i2").tobytes())
            assert json.loads(ws.recv(timeout=10))["type"] == "chunk"
            proc.send_signal(signal.SIGTERM)
            closing = json.loads(ws.recv(timeout=15))
            assert closing == {"type": "closing", "reason": "server shutting down"}
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=15)
            assert closed.value.rcvd.code == 1001
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(240)
def test_sigterm_under_load_exits_within_seconds_and_answers_the_upload(tmp_path):
    """An upload that would take minutes is in the worker when SIGTERM comes: it ends at its
    next piece with a 503, and the server exits within 5 s."""
    import threading

    from tests.serve.conftest import wav_bytes

    torch.manual_seed(0)
    model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=48, num_heads=3,
                                 clip_seconds=1.0)
    save_model_dir(model.eval(), tmp_path / "m", list(TONES))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "earmark", "serve", str(tmp_path / "m"),
                             "--port", str(port), "--threads", "1", "--log-level", "warning",
                             "--max-chunks", "1000000", "--max-request-seconds", "600"],
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    answer = {}
    body = wav_bytes(tone(1000.0, 1200.0))  # made before the clock starts: slow on a busy CPU

    def upload():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/tag?chunk=0.5&events=1",
                                     data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                answer["status"] = r.status
        except urllib.error.HTTPError as err:
            answer["status"], answer["detail"] = err.code, json.load(err)["detail"]
        except OSError as err:
            answer["status"] = repr(err)

    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        client = threading.Thread(target=upload, daemon=True)
        client.start()
        time.sleep(3.0)  # the 20-minute upload is read and being scored
        assert client.is_alive(), answer
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - t0
        client.join(timeout=30)
        assert code == 0 and took <= 5.0, f"exit {code} after {took:.1f} s"
        assert answer.get("status") == 503 and "shutting down" in answer["detail"], answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- the web page in a real browser ------------------------------------------------------------


def tone(freq: float, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    amp = rng.uniform(0.1, 0.6)
    x = amp * np.sin(2 * np.pi * freq * rng.uniform(0.97, 1.03) * t + rng.uniform(0, 6.3))
    return (x + rng.standard_normal(t.size) * rng.uniform(0.001, 0.02)).astype(np.float32)


@pytest.fixture(scope="module")
def tone_tagger() -> Tagger:
    """A small SAT trained for a few seconds to tell three tones apart, so that the label a
    clip gets does not depend on how the browser resamples or where its loop starts."""
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", len(TONES), depth=1, embed_dim=48, num_heads=3,
                                 chunk_seconds=1.0, multi_label=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    rng = np.random.default_rng(0)
    for step in range(100):
        y = rng.integers(0, len(TONES), 12)
        x = torch.from_numpy(np.stack([tone(list(TONES.values())[k], 1.0, seed=step * 100 + i)
                                       for i, k in enumerate(y)]))
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return Tagger(model.eval(), {"labels": list(TONES), "name": "tones"})


def chrome(audio_file):
    """Headless Chromium whose microphone plays ``audio_file``; skips when it cannot start."""
    pytest.importorskip("selenium", reason="the browser test needs selenium")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Chromium and chromedriver are not installed (Debian packages chromium and "
                    "chromium-driver; .ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={audio_file}",
                 "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    try:
        return webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    except WebDriverException as err:
        pytest.skip(f"Chromium could not start here: {str(err).splitlines()[0]}")


@pytest.mark.timeout(240)
def test_the_page_listens_through_the_microphone_and_shows_the_label(tone_tagger, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from earmark.serve import create_app

    clip = tone(TONES["high"], 4.0, seed=7)
    path = tmp_path / "mic.wav"
    sf.write(path, clip, SR, subtype="PCM_16")
    # the label the model gives this clip, chunk after chunk, as the page will stream it
    results = tone_tagger.stream(1.0).push(clip)
    want = results[0].labels[0][0]
    assert want == "high" and all(r.labels[0][0] == want and r.labels[0][1] > 0.7
                                  for r in results)
    browser = chrome(path)
    try:
        with RunningServer(create_app({"tones": tone_tagger})) as url:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            browser.find_element(By.ID, "start").click()

            # the top label and the chunk it belongs to, read at once (the list is redrawn)
            read = ("const li = document.querySelector('#labels li');"
                    "return li ? [li.dataset.label, document.getElementById('clock')"
                    ".textContent] : null;")
            shown = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(shown) < 4:
                now = browser.execute_script(read)
                if now and (not shown or shown[-1][1] != now[1]):
                    shown.append(tuple(now))
                time.sleep(0.2)
            status = browser.find_element(By.ID, "status").text
            assert len(shown) >= 4, f"the page showed {shown} within 60 s; status: {status}"
            # the first chunk may hold the silence before the fake microphone starts playing
            assert [label for label, _ in shown[1:]] == [want] * (len(shown) - 1), (shown, status)
            assert "Listening" in status
            # a file given to the page is tagged through /v1/tag
            low = tmp_path / "low.wav"
            sf.write(low, tone(TONES["low"], 2.0, seed=3), SR, subtype="PCM_16")
            assert tone_tagger.tag(low, top_k=1)[0][0] == "low"
            browser.find_element(By.ID, "file").send_keys(str(low))
            WebDriverWait(browser, 30).until(lambda b: b.find_elements(By.ID, "file-labels"))
            text = browser.find_element(By.ID, "file-labels").text
            assert text.startswith("low.wav (2.00 s): low "), text
    finally:
        browser.quit()
