"""The web page in headless Chromium: the live log-mel spectrogram on the timeline's time axis,
and a layout that holds at a desktop and at a phone's width."""

from __future__ import annotations

import base64
import math
import time

import numpy as np
import pytest
import soundfile as sf

from tests.serve import test_server
from tests.serve.conftest import SR, RunningServer
from tests.serve.test_server import TONES, chrome, tone

tone_tagger = test_server.tone_tagger  # the fixture, seen by pytest in this module too

# the page's spectrogram: HTK mel bands from 0 Hz up to this
MEL_TOP_HZ = 8000.0

# every pixel of a canvas as base64 RGBA (one small message), and the time axis it was drawn
# at: one script, so no animation frame can come between the two
READ_CANVAS = """
const c = document.getElementById(arguments[0]);
if (!c) return null;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let s = '';
for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
return [c.width, c.height, btoa(s), window.earmarkView || null];
"""

# one read of everything the layout checks need, taken in the same frame
READ_LAYOUT = """
const box = (id) => {
  const e = document.getElementById(id);
  if (!e) return null;
  const r = e.getBoundingClientRect(), s = getComputedStyle(e);
  const px = (v) => parseFloat(v) || 0;
  const line = s.lineHeight === 'normal' ? 1.2 * px(s.fontSize) : px(s.lineHeight);
  return {left: r.left, top: r.top, width: r.width, height: r.height, offsetTop: e.offsetTop,
          clientWidth: e.clientWidth, pixelWidth: e.width,
          content: r.height - px(s.paddingTop) - px(s.paddingBottom)
                   - px(s.borderTopWidth) - px(s.borderBottomWidth),
          line: line};
};
return {innerWidth: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
        dpr: window.devicePixelRatio, start: box('start'), stop: box('stop'),
        spectrogram: box('spectrogram'), timeline: box('timeline'),
        view: window.earmarkView || null};
"""


def read_canvas(browser, canvas_id: str) -> tuple[np.ndarray | None, dict | None]:
    """The canvas's pixels as (height, width, RGBA), None when the page has no such canvas,
    and the page's ``earmarkView`` of the same moment."""
    got = browser.execute_script(READ_CANVAS, canvas_id)
    if got is None:
        return None, None
    width, height, data, view = got
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4), view


def mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def wait_for(predicate, seconds: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / step) + 1):
        got = predicate()
        if got or time.monotonic() > deadline:
            break
        time.sleep(step)
    assert got, f"{what} within {seconds:g} s"
    return got


def check_layout(browser, width: int, height: int, shot) -> dict:
    browser.set_window_size(width, height)

    def settled():
        # the window has its new width and both canvases were redrawn at it, device pixels
        # and all (the page sizes them at draw time)
        lay = browser.execute_script(READ_LAYOUT)
        canvases = (lay["spectrogram"], lay["timeline"])
        if lay["innerWidth"] > width or any(c is None for c in canvases):
            return None
        if any(c["pixelWidth"] != round(c["clientWidth"] * lay["dpr"]) for c in canvases):
            return None
        return lay

    lay = wait_for(settled, 10, f"the page did not redraw its canvases at {width}x{height}")
    browser.save_screenshot(str(shot))
    where = f"at {width}x{height} (see {shot})"
    start, stop = lay["start"], lay["stop"]
    assert start["offsetTop"] == stop["offsetTop"] and abs(start["top"] - stop["top"]) < 1, (
        f"Start and Stop are not on one line {where}: {start}, {stop}")
    for name, b in (("Start", start), ("Stop", stop)):
        assert b["content"] < 1.5 * b["line"], f"the {name} button wraps its text {where}: {b}"
    assert lay["scrollWidth"] <= lay["innerWidth"], f"the page scrolls sideways {where}: {lay}"
    spec, line = lay["spectrogram"], lay["timeline"]
    assert abs(spec["left"] - line["left"]) < 0.5 and abs(spec["width"] - line["width"]) < 0.5, (
        f"the spectrogram and the timeline do not share a time axis {where}: {spec}, {line}")
    assert spec["left"] >= 0 and spec["left"] + spec["width"] <= lay["innerWidth"], where
    return lay


@pytest.mark.timeout(240)
def test_the_page_draws_a_live_spectrogram_on_the_timelines_time_axis(tone_tagger, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from earmark.serve import create_app

    freq = TONES["high"]
    path = tmp_path / "mic.wav"
    sf.write(path, tone(freq, 4.0, seed=7), SR, subtype="PCM_16")
    browser = chrome(path)
    try:
        browser.set_window_size(1280, 900)
        with RunningServer(create_app({"tones": tone_tagger})) as url:
            browser.get(url + "/")
            WebDriverWait(browser, 30).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, "#model option"))
            before, _ = read_canvas(browser, "spectrogram")
            assert before is not None, "the page has no #spectrogram canvas"
            background = before[0, 0]
            assert (before == background).all(), "the spectrogram is drawn before any audio"

            browser.find_element(By.ID, "start").click()
            clocks: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(clocks) < 6:
                clock = browser.find_element(By.ID, "clock").text
                if clock and (not clocks or clocks[-1] != clock):
                    clocks.append(clock)
                time.sleep(0.2)
            status = browser.find_element(By.ID, "status").text
            assert len(clocks) >= 6, f"the page showed chunks {clocks} within 60 s; {status}"
            assert "Listening" in status, status
            assert browser.find_elements(By.CSS_SELECTOR, "#labels li[data-label]")

            # (a) the spectrogram, and the stream time it was drawn at
            img, view = read_canvas(browser, "spectrogram")
            assert view is not None, "the page does not say how it draws time (earmarkView)"
            spec = view["spectrogram"]
            assert spec == view["timeline"], f"the canvases draw different time axes: {view}"
            dpr = view["dpr"]
            now, pps, window = view["now"], spec["pxPerSecond"], view["windowSeconds"]
            assert now >= 5 and window == 30, view
            assert abs(pps * window - spec["width"]) < 0.5, view

            def px(t: float) -> int:  # a stream time as a device pixel column
                return int(round((spec["left"] + spec["width"] - (now - t) * pps) * dpr))

            drawn = (img != background).any(axis=2)  # (height, width)
            plot = drawn[:, px(now - window):px(now)]
            assert plot.mean() > 0.1, f"only {plot.mean():.1%} of the spectrogram is drawn"
            # the stream started at time 0: drawn from there to now, nothing before it
            since, ahead = drawn[:, px(0) + 3:px(now) - 3], drawn[:, px(now - window) + 3:px(0) - 3]
            assert since.mean() > 0.98, f"{since.mean():.1%} drawn since the stream started"
            assert ahead.size == 0 or ahead.mean() < 0.01, "drawn before the stream started"

            # the last second: columns that differ, and the tone's band the brightest row
            recent = img[:, px(now - 1.0):px(now) - 2, :3].astype(float)
            columns = {recent[:, i].tobytes() for i in range(recent.shape[1])}
            assert len(columns) > recent.shape[1] // 2, "the recent columns are all alike"
            profile = recent.sum(axis=2).mean(axis=1)  # brightness by row, top row first
            row = int(profile.argmax())
            at = 1.0 - (row + 0.5) / img.shape[0]
            want = mel(freq) / mel(MEL_TOP_HZ)
            assert abs(at - want) < 0.05, (
                f"the brightest band is at {at:.2f} of the height, a {freq:g} Hz tone "
                f"belongs at {want:.2f}")

            # (b) the layout at a desktop's and at a phone's width, with the stream running
            for width, height in ((1280, 900), (390, 844)):
                lay = check_layout(browser, width, height, tmp_path / f"page-{width}.png")
                assert lay["view"]["spectrogram"] == lay["view"]["timeline"], lay["view"]
    finally:
        browser.quit()
