"""Online tagging sessions: block-size invariance, the SAT cache, sliding windows, bounded memory."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import soxr
import torch

import earmark
from earmark.audio.io import load_audio
from earmark.errors import AudioError, EarmarkError
from earmark.infer.chunks import ChunkResult, score_chunks
from earmark.infer.stream import StreamSession, stream_file, stream_mic
from earmark.infer.tagger import Tagger

SR = 16000
LABELS = ["dog", "rain", "siren"]
SAT_DEPTH = 1  # one block: the first block's tokens are the whole cache


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: thread hand-offs cost more than they save, and much more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sat():
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", len(LABELS), depth=SAT_DEPTH, embed_dim=48,
                                 num_heads=3, chunk_seconds=1.0)
    return Tagger(model.eval(), {"labels": LABELS, "name": "sat-test"})


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(1)
    model = earmark.create_model("vit-tiny", len(LABELS), depth=1, embed_dim=48, num_heads=3,
                                 clip_seconds=3.0)
    return Tagger(model.eval(), {"labels": LABELS, "name": "vit-test"})


def noise(seconds: float, sr: int = SR, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(int(round(seconds * sr))) * amp
    return x.astype(np.float32)


def push_in_blocks(session: StreamSession, x, block: int) -> list[ChunkResult]:
    out = []
    for i in range(0, len(x), block):
        out += session.push(x[i:i + block])
    return out + session.flush()


def spans(results):
    return [(r.start, r.end) for r in results]


def assert_same_results(a, b, atol=1e-6):
    assert spans(a) == spans(b)
    for ra, rb in zip(a, b):
        torch.testing.assert_close(ra.scores, rb.scores, atol=atol, rtol=0)


@pytest.mark.parametrize("which", ["sat", "vit"])
def test_block_size_does_not_change_results(which, request):
    tagger = request.getfixturevalue(which)
    x = noise(3.5)
    whole = push_in_blocks(tagger.stream(), x, len(x))
    assert spans(whole) == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 3.5)]
    for block in (160, 7919):
        assert_same_results(push_in_blocks(tagger.stream(), x, block), whole)
    # torch tensors and numpy arrays are the same input
    assert_same_results(push_in_blocks(tagger.stream(), torch.from_numpy(x), 4000), whole)
    r = whole[0]
    assert r.scores.shape == (3,) and ((r.scores > 0) & (r.scores < 1)).all()
    assert [lab for lab, _ in r.labels] == [LABELS[i] for i in r.scores.topk(3).indices]
    assert r.latency_ms > 0


def test_sat_session_equals_forward_chunk_from_primed_cache(sat):
    x = torch.from_numpy(noise(4.0, seed=3))
    model = sat.model
    expected = []
    with torch.inference_mode():
        cache = model.prime_cache(1)
        for chunk in x.split(SR):
            logits, cache = model.forward_chunk(chunk.unsqueeze(0), cache)
            expected.append(model.activation(logits)[0])
    session = sat.stream()
    got = session.push(x[:2500]) + session.push(x[2500:])
    assert len(got) == 4
    for r, e in zip(got, expected):
        assert torch.equal(r.scores, e)
    assert got[2].window == (2.0, 3.0)
    # the cache matters: chunk 2 alone from a primed cache scores differently
    with torch.inference_mode():
        alone = model.activation(model.forward_chunk(x[SR:2 * SR].unsqueeze(0),
                                                     model.prime_cache(1))[0])[0]
    assert not torch.allclose(got[1].scores, alone, atol=1e-6)


@pytest.mark.parametrize("which", ["sat", "vit"])
def test_flush_pads_or_drops_the_tail(which, request):
    tagger = request.getfixturevalue(which)
    x = noise(2.5, seed=4)
    padded = push_in_blocks(tagger.stream(tail="pad"), x, 3000)
    dropped = push_in_blocks(tagger.stream(tail="drop"), x, 3000)
    assert spans(padded) == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    assert spans(dropped) == [(0.0, 1.0), (1.0, 2.0)]
    assert_same_results(padded[:2], dropped, atol=0)
    # the padded tail scores as 0.5 s of audio followed by 0.5 s of zeros
    zeros = np.concatenate([x, np.zeros(SR // 2, np.float32)])
    exact = push_in_blocks(tagger.stream(tail="drop"), zeros, len(zeros))
    assert torch.equal(padded[2].scores, exact[2].scores)


def test_flush_and_reset_start_a_new_stream(sat):
    a, b = noise(2.3, seed=5), noise(3.0, seed=6)
    fresh = push_in_blocks(sat.stream(), b, 7919)

    session = sat.stream()
    assert len(session.push(a)) == 2 and session.time == pytest.approx(2.3)
    session.reset()
    assert session.time == 0.0
    assert_same_results(push_in_blocks(session, b, 7919), fresh, atol=0)

    session.push(a)
    session.flush()  # ends the stream: the next push starts at 0 s with a primed cache
    assert_same_results(push_in_blocks(session, b, 7919), fresh, atol=0)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_other_sample_rates_are_resampled(sat, rate):
    x = noise(3.0, sr=rate, seed=7)
    at_model_rate = soxr.resample(x, rate, SR, "HQ").astype(np.float32)
    expected = push_in_blocks(sat.stream(), at_model_rate, len(at_model_rate))
    session = sat.stream(sample_rate=rate)
    for block in (441, 7919):
        got = push_in_blocks(session, x, block)
        assert spans(got) == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
        assert_same_results(got, expected, atol=1e-5)


def test_full_context_model_scores_the_sliding_window(vit):
    x = torch.from_numpy(noise(5.5, seed=8))
    session = vit.stream(chunk_seconds=1.0)  # window: the model's 3 s clip
    assert session.window_samples == 3 * SR
    results = push_in_blocks(session, x, 1234)
    assert spans(results) == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, 5.0),
                              (5.0, 5.5)]
    assert [r.window for r in results] == [(0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (1.0, 4.0),
                                           (2.0, 5.0), (3.0, 6.0)]
    for r in results[:-1]:
        lo, hi = (int(t * SR) for t in r.window)
        assert torch.equal(r.scores, vit.score_wave(x[lo:hi]))
    padded = torch.cat([x[3 * SR:], torch.zeros(SR // 2)])
    assert torch.equal(results[-1].scores, vit.score_wave(padded))
    # the window, not the chunk alone, is what was scored
    assert not torch.allclose(results[4].scores, vit.score_wave(x[4 * SR:5 * SR]), atol=1e-6)


def test_memory_stays_flat_on_a_long_stream(sat, vit):
    # An hour of noise in 10 s blocks through SAT (~5 s), 10 minutes through the
    # sliding-window ViT (each chunk scores a 3 s window).
    for tagger, minutes in ((sat, 60), (vit, 10)):
        session = tagger.stream()
        gen = torch.Generator().manual_seed(0)
        sizes, count = set(), 0
        for _ in range(minutes * 6):
            count += len(session.push(torch.randn(10 * SR, generator=gen) * 0.01))
            sizes.add(sum(t.numel() for t in session.state_tensors()))
        assert count == minutes * 60
        assert session.time == minutes * 60
        buffer = session.chunk_samples if session.streaming else session.window_samples
        assert buffer <= 3 * SR
        assert len(sizes) == 1 and sizes.pop() < buffer + 50_000  # samples + cache


def test_stream_file_hands_over_each_result_as_it_comes_and_prints_nothing(sat, write_wav,
                                                                           capsys):
    x = noise(3.5, seed=9)
    path = write_wav("street.wav", data=x)
    seen: list[ChunkResult] = []
    results = stream_file(sat, path, on_result=seen.append)
    assert seen == results and len(results) == 4
    assert all(len(r.labels) == 3 for r in results)  # top_k
    assert spans(results)[-1] == (3.0, 3.5)
    wave, _ = load_audio(path)  # the file as stored (16-bit), pushed all at once
    assert_same_results(results, push_in_blocks(sat.stream(), wave, len(wave)))
    assert stream_file(sat, path, collect=False, tail="drop") == 3
    assert capsys.readouterr().out == ""


def test_bad_blocks_are_refused(sat):
    session = sat.stream()
    session.push(noise(0.5))
    bad = noise(0.1)
    bad[10] = np.nan
    with pytest.raises(AudioError, match=r"<stream>: NaN or infinite samples .* 0\.50 s"):
        session.push(bad)
    with pytest.raises(AudioError, match="1-D block"):
        session.push(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="tail"):
        sat.stream(tail="keep")
    with pytest.raises(ValueError, match="window_seconds is for full-context"):
        sat.stream(window_seconds=5.0)


def test_integer_pcm_is_scaled(sat):
    x = noise(2.0, seed=10)
    pcm = np.round(x * 32768).astype(np.int16)
    as_float = push_in_blocks(sat.stream(), pcm.astype(np.float32) / 32768, 5000)
    assert_same_results(push_in_blocks(sat.stream(), pcm, 5000), as_float, atol=0)


def test_mic_without_sounddevice_says_how_to_install(sat, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    with pytest.raises(EarmarkError, match=re.escape("pip install 'earmark[mic]'")):
        stream_mic(sat, seconds=1.0)


def test_mic_records_at_the_device_rate_and_tags(sat, monkeypatch):
    rate = 48000
    signal = noise(2.5, sr=rate, seed=11)

    class FakeInputStream:
        def __init__(self, samplerate, channels, dtype, device, blocksize):
            assert (samplerate, channels, dtype) == (rate, 1, "float32")
            self.pos = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, frames):
            block = signal[self.pos:self.pos + frames]
            self.pos += frames
            return block[:, None], False  # (frames, channels), overflowed

    fake = types.SimpleNamespace(
        query_devices=lambda device, kind: {"default_samplerate": float(rate)},
        InputStream=FakeInputStream)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    seen: list[ChunkResult] = []
    results = stream_mic(sat, seconds=2.5, on_result=seen.append, collect=True)
    assert seen == results and spans(results) == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    expected = push_in_blocks(sat.stream(sample_rate=rate), signal, len(signal))
    assert_same_results(results, expected, atol=0)


def test_chunk_scores_of_a_streaming_model_go_through_its_cache(write_wav):
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 3, depth=2, embed_dim=48, num_heads=3,
                                 chunk_seconds=1.0).eval()
    tagger = Tagger(model, {"labels": ["a", "b", "c"], "name": "sat-tiny"})
    path = write_wav("s.wav", seconds=2.5)
    chunks = tagger.chunk_scores(path, 1.0)
    session = tagger.stream()
    wave = earmark.load_audio(path)[0]
    expect = session.push(wave) + session.flush()
    assert [(c.start, c.end) for c in chunks] == [(r.start, r.end) for r in expect]
    for c, r in zip(chunks, expect):
        torch.testing.assert_close(c.scores, r.scores)


def test_a_tagger_traces_its_chunk_step_once(sat, write_wav):
    tagger = Tagger(sat.model, sat.config)  # a fresh tagger: nothing traced yet
    model = tagger.model
    traced = []
    original = model.traced_chunk_step

    def counting(*args, **kw):
        traced.append(args[0].shape)
        return original(*args, **kw)

    model.traced_chunk_step = counting
    try:
        first = write_wav("a.wav", seconds=2.5)
        second = write_wav("b.wav", seconds=1.5)
        a1 = tagger.chunk_scores(first, model.chunk_seconds)
        tagger.chunk_scores(second, model.chunk_seconds)
        a2 = tagger.chunk_scores(first, model.chunk_seconds)
        session = tagger.stream()
        session.push(noise(1.0))
        assert len(traced) == 1  # one shape, one trace, for every file and stream
        assert session.chunk_step is tagger.chunk_step(session.chunk_samples)  # the stream's
        for x, y in zip(a1, a2):
            torch.testing.assert_close(x.scores, y.scores)
        # and the traced step scores as the model does, chunk by chunk through the cache
        eager = StreamSession(tagger, model.chunk_seconds, fast=False)
        wave = tagger.waveform(first)
        plain = [r for r in eager.push(wave) + eager.flush()]
        assert len(plain) == len(a1)
        for x, y in zip(a1, plain):
            torch.testing.assert_close(x.scores, y.scores, atol=1e-5, rtol=0)
    finally:
        del model.traced_chunk_step


@pytest.mark.parametrize("which", ["sat", "vit"])
def test_chunks_of_many_streams_scored_together_equal_each_stream_alone(which, request):
    tagger = request.getfixturevalue(which)
    clips = [noise(2.5, seed=s, amp=0.05 * (s + 1)) for s in range(4)]
    alone = [push_in_blocks(tagger.stream(), x, 1600) for x in clips]
    sessions = [tagger.stream() for _ in clips]
    together: list[list[ChunkResult]] = [[] for _ in clips]
    for i in range(0, 40000, 1600):  # every stream's block of the moment in one call
        pending = [p for s, x in zip(sessions, clips) for p in s.feed(x[i:i + 1600])]
        pending += [p for s in sessions for p in s.finish()] if i + 1600 >= len(clips[0]) else []
        scored = score_chunks(pending)
        for r, p in zip(scored.results, pending):
            together[sessions.index(p.session)].append(r)
        for s in sessions:
            s.take(scored)  # each streaming session goes on from its new cache
    for a, b in zip(alone, together):
        assert_same_results(a, b, atol=1e-5)
    # several chunks of one session in one call are scored in order, each with its cache
    session = tagger.stream()
    assert_same_results(session.take(score_chunks(session.feed(clips[0]) + session.finish())),
                        alone[0], atol=1e-5)


@pytest.mark.parametrize("name, kw, chunk", [
    ("sat-tiny", {"chunk_seconds": 2.0}, 2.0),  # a streaming model: its own chunk
    ("vit-tiny", {"clip_seconds": 2.0}, 1.0),  # a full-context model: 1 s, not its clip
])
def test_a_stream_without_a_chunk_length_uses_the_models_default(name, kw, chunk):
    model = earmark.create_model(name, 3, depth=1, embed_dim=48, num_heads=3, **kw).eval()
    tagger = Tagger(model, {"labels": ["a", "b", "c"]})
    assert tagger.chunk_seconds == chunk
    session = tagger.stream()
    assert session.chunk_seconds == chunk
    results = session.push(noise(2 * chunk)) + session.flush()
    assert spans(results) == [(0.0, chunk), (chunk, 2 * chunk)]


def test_scoring_leaves_a_session_as_it_was_until_it_takes_its_cache(sat):
    session = sat.stream()
    primed = session.cache
    scored = score_chunks(session.feed(noise(2.0)))
    assert session.cache is primed  # nothing was written into the session
    assert len(scored.results) == 2 and scored.caches[session] is not primed
    assert session.take(scored) is scored.results
    assert session.cache is scored.caches[session]
    # the next chunk goes on from that cache, as one push of all the audio does
    later = session.take(score_chunks(session.feed(noise(1.0, seed=3))))
    whole = sat.stream().push(np.concatenate([noise(2.0), noise(1.0, seed=3)]))
    assert_same_results(scored.results + later, whole, atol=1e-5)
