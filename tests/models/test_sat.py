import pytest
import torch

import earmark
from earmark.audio.features import PRESETS
from earmark.errors import ModelError
from earmark.models.convert import convert

SMALL = dict(depth=2, embed_dim=48, num_heads=3)


def tiny(name="sat-tiny", **kw):
    torch.manual_seed(0)
    return earmark.create_model(name, 5, **{**SMALL, **kw}).eval()


@pytest.mark.parametrize("chunk,frames,tokens", [(2.0, 192, 48), (1.0, 96, 24)])
def test_chunk_sizes_of_the_released_models(chunk, frames, tokens):
    m = earmark.create_model("sat-tiny", 527, chunk_seconds=chunk)
    assert (m.target_length, m.cache_length, m.cache_tokens) == (frames, frames, tokens)
    assert m.time_pos_embed.shape[-1] == 2 * frames // 16  # chunk + cache positions
    assert {"sat-tiny", "sat-small", "sat-base"} <= set(earmark.list_models())
    assert earmark.create_model("sat-small", 3).pooling == "token"


def test_chunks_follow_the_front_ends_frame_rate():
    # a 5 ms hop: 200 frames per second, so a 1 s chunk is 192 frames (whole patches), not
    # the 96 of the released 100-frame models, and a 1 s wave fills one chunk, tail included
    fast = {**PRESETS["sat"].to_dict(), "name": "sat-5ms", "hop_length": 80}
    m = tiny(chunk_seconds=1.0, frontend=fast)
    assert (m.target_length, m.cache_length) == (192, 192)
    wave = torch.randn(1, 16000)
    spec = m.frontend(wave)  # 201 frames: 192 fill the chunk, 9 are the cut tail
    first, _ = m.forward_chunk(wave)
    whole, _ = m.forward_spectrogram_cached(spec[..., :192])
    torch.testing.assert_close(first, whole)
    # the primed cache comes from cache_length frames of silence (at 200 frames per second)
    seen = []
    m.forward_chunk = lambda w, c=None: seen.append(w.shape[-1]) or (None, c)
    m.prime_cache(1)
    assert seen == [192 * 80]


def test_pieces_of_a_long_input_go_through_the_cache_in_turn():
    m = tiny(chunk_seconds=1.0)
    spec = torch.randn(2, 64, 96 * 3 + 40)  # three full pieces and a tail that is dropped
    logits, cache = m.forward_spectrogram_cached(spec)
    c = m.empty_cache(2)
    probs = []
    for i in range(3):
        piece = m.normalize(spec[..., i * 96:(i + 1) * 96])
        feats, c = m.forward_features_cached(piece, c)
        probs.append(m.activation(m.forward_head(feats)))
    torch.testing.assert_close(m.activation(logits), torch.stack(probs).mean(0), atol=1e-6,
                               rtol=1e-5)
    torch.testing.assert_close(cache.keys, c.keys)


def test_the_cache_changes_the_output_and_stays_the_same_size():
    m = tiny(chunk_seconds=1.0)
    wave = torch.randn(1, 16000)
    alone, _ = m.forward_chunk(wave)
    cache = m.prime_cache(1)
    assert cache.tokens == m.cache_tokens and not cache.h0.requires_grad
    with_past, cache = m.forward_chunk(wave, cache)
    assert not torch.allclose(alone, with_past)
    for _ in range(5):
        _, cache = m.forward_chunk(torch.randn(1, 16000), cache)
    assert cache.h0.shape == (1, 24, 48) and cache.keys.shape == (1, 1, 3, 24, 16)


def test_training_through_the_cache_is_stop_gradient():
    m = tiny(chunk_seconds=1.0).train()
    first = torch.randn(2, 64, 96, requires_grad=True)
    second = torch.randn(2, 64, 96, requires_grad=True)
    _, cache = m.forward_spectrogram_cached(first)
    logits, _ = m.forward_spectrogram_cached(second, cache)
    # the second chunk reads the first through the cache ...
    other_past = m.forward_spectrogram_cached(torch.randn(2, 64, 96))[1]
    assert not torch.allclose(logits, m.forward_spectrogram_cached(second, other_past)[0])
    # ... but its loss sends no gradient back into the first chunk
    logits.sum().backward()
    assert second.grad is not None and second.grad.abs().sum() > 0
    assert first.grad is None or not first.grad.any()
    assert m.patch_embed.proj.weight.grad is not None


def official_layout(model, streaming: bool) -> dict:
    """An earmark ViT/SAT state dict rewritten in the SAT repository's key layout."""
    sd = {}
    d = model.embed_dim
    for k, v in model.state_dict().items():
        if k.startswith("init_bn."):
            k = "init_bn.1." + k[len("init_bn."):]
        if streaming and ".attn.qkv." in k:
            sd[k.replace("qkv", "to_q")] = v[:d].clone()
            sd[k.replace("qkv", "to_kv")] = v[d:].clone()
            continue
        sd[k] = v.clone()
    sd["front_end.0.spectrogram.window"] = torch.hann_window(512)
    sd["front_end.0.mel_scale.fb"] = torch.zeros(257, 64)
    return sd


@pytest.mark.parametrize("name,kind,wrap", [("sat-tiny", "sat-official", "model"),
                                            ("vit-tiny", "vit-official", None)])
def test_convert_from_the_official_layout(tmp_path, name, kind, wrap):
    torch.manual_seed(0)
    ref = earmark.create_model(name, 527, depth=2).eval()
    sd = official_layout(ref, streaming=name.startswith("sat"))
    torch.save({wrap: sd} if wrap else sd, tmp_path / "official.pt")
    tagger = earmark.load(convert(kind, tmp_path / "official.pt", tmp_path / "out"))
    assert tagger.labels[0] == "Speech" and tagger.model.registry_name == name
    x = torch.randn(1, 16000 * 3)
    torch.testing.assert_close(tagger.model(x), ref(x))


def test_convert_resizes_position_embeddings_as_the_official_loader(tmp_path):
    torch.manual_seed(0)
    ref = earmark.create_model("vit-tiny", 527, depth=1).eval()
    sd = official_layout(ref, streaming=False)
    sd["time_pos_embed"] = torch.randn(1, 192, 1, 80)  # longer: cropped to 63
    torch.save(sd, tmp_path / "long.pt")
    m = earmark.load(convert("vit-official", tmp_path / "long.pt", tmp_path / "a")).model
    torch.testing.assert_close(m.time_pos_embed, sd["time_pos_embed"][..., :63])
    sd["time_pos_embed"] = torch.randn(1, 192, 1, 20)  # shorter: interpolated to 63
    torch.save(sd, tmp_path / "short.pt")
    m = earmark.load(convert("vit-official", tmp_path / "short.pt", tmp_path / "b")).model
    assert m.time_pos_embed.shape == (1, 192, 1, 63)
    torch.save({"x": torch.zeros(1)}, tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="not a SAT-repository"):
        convert("vit-official", tmp_path / "junk.pt", tmp_path / "c")


def test_traced_chunk_step_gives_the_eager_numbers():
    m = tiny(chunk_seconds=1.0)
    wave = torch.randn(1, 16000)
    cache = m.prime_cache(1)
    step = m.traced_chunk_step(wave, cache)
    a, ca = m.forward_chunk(wave, cache)
    b, cb = step(wave, cache)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ca.keys, cb.keys)
    short = torch.randn(1, 9000)  # another shape falls back to the eager path
    torch.testing.assert_close(step(short, cb)[0], m.forward_chunk(short, cb)[0])


@pytest.mark.parametrize("failure", ["raises", "disagrees"])
def test_traced_chunk_step_keeps_the_frozen_graph_when_optimising_fails(monkeypatch, failure):
    def optimise(module):
        if failure == "raises":
            raise RuntimeError("no oneDNN here")
        return lambda *args: tuple(out + 1 for out in module(*args))

    monkeypatch.setattr(torch.jit, "optimize_for_inference", optimise)
    m = tiny(chunk_seconds=1.0)
    wave = torch.randn(1, 16000)
    cache = m.prime_cache(1)
    step = m.traced_chunk_step(wave, cache)
    torch.testing.assert_close(step(wave, cache)[0], m.forward_chunk(wave, cache)[0])


def test_a_single_block_sat_streams():
    m = tiny(depth=1, chunk_seconds=1.0)
    logits, cache = m.forward_chunk(torch.randn(1, 16000), m.prime_cache(1))
    assert logits.shape == (1, 5) and cache.keys.shape[0] == 0 and cache.h0.shape[1] == 24


def test_compiled_chunk_step_stays_within_tolerance():
    m = tiny(depth=1, chunk_seconds=1.0)
    wave = torch.randn(1, 16000)
    cache = m.prime_cache(1)
    step = m.traced_chunk_step(wave, cache, compile=True)
    a, ca = m.forward_chunk(wave, cache)
    b, cb = step(wave, cache)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(ca.keys, cb.keys, atol=1e-4, rtol=0)
