"""ONNX export: onnxruntime equals PyTorch, the check fails loudly, the file describes itself."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import earmark
import earmark.export as ex
from earmark.errors import ModelError
from earmark.export import export_onnx
from earmark.infer.onnx import OnnxModel, onnx_metadata
from earmark.infer.tagger import load_onnx
from earmark.models.directory import save_model_dir

LABELS = ["dog", "rain", "siren"]
ATOL = 1e-4


def _save(tmp_path_factory, name: str, **kw):
    torch.manual_seed(0)
    model = earmark.create_model(name, 3, embed_dim=48, num_heads=3, **kw).eval()
    return save_model_dir(model, tmp_path_factory.mktemp(name) / "model", LABELS)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    model_dir = _save(tmp_path_factory, "vit-tiny", depth=1, clip_seconds=1.0)
    return model_dir, export_onnx(model_dir, model_dir.parent / "vit.onnx")


@pytest.fixture(scope="module")
def sat(tmp_path_factory):
    model_dir = _save(tmp_path_factory, "sat-tiny", depth=1, chunk_seconds=1.0)
    return model_dir, export_onnx(model_dir, model_dir.parent / "sat.onnx")


def _noise(*shape, seed=1):
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_vit_graph_equals_pytorch_for_any_batch_and_length_in_its_range(vit):
    model_dir, path = vit
    model = earmark.load(model_dir).model
    onnx_model = OnnxModel(path)
    info = onnx_model.export_info
    assert (info["kind"], info["batch"]) == ("clip", None)
    assert info["min_samples"] < 8000 and info["max_samples"] > 48000
    inputs = {i.name: i.shape for i in onnx_model.session.get_inputs()}
    assert inputs == {"wave": ["batch", "samples"]}
    for shape in [(2, 16000), (1, 8000), (3, 48000)]:
        wave = _noise(*shape)
        with torch.no_grad():
            ref = model(wave)
        torch.testing.assert_close(onnx_model(wave), ref, atol=ATOL, rtol=0)
    assert onnx_metadata(path)["check"]["max_abs_diff"] <= ATOL


def test_sat_graph_equals_pytorch_chunk_by_chunk_from_the_primed_cache(sat):
    model_dir, path = sat
    model = earmark.load(model_dir).model
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "wave", "cache_h0", "cache_keys", "cache_values"]
    assert [o.name for o in session.get_outputs()] == [
        "logits", "next_h0", "next_keys", "next_values"]
    # (L-1, B, H, M, hd): one block keeps no keys of later blocks
    assert session.get_inputs()[2].shape == [0, 1, 3, model.cache_tokens, 16]

    with torch.no_grad():
        cache = model.prime_cache(1)
    stored = OnnxModel(path).prime_cache(1)  # the primed cache travels in the metadata
    for got, ref in zip((stored.h0, stored.keys, stored.values),
                        (cache.h0, cache.keys, cache.values)):
        torch.testing.assert_close(got, ref)
    state = [stored.h0.numpy(), stored.keys.numpy(), stored.values.numpy()]
    for step in range(4):
        wave = _noise(1, 16000, seed=step)
        with torch.no_grad():
            logits, cache = model.forward_chunk(wave, cache)
        out = session.run(None, {"wave": wave.numpy(), "cache_h0": state[0],
                                 "cache_keys": state[1], "cache_values": state[2]})
        for got, ref in zip(out, (logits, cache.h0, cache.keys, cache.values)):
            np.testing.assert_allclose(got, ref.numpy(), atol=ATOL, rtol=0)
        state = out[1:]


def test_a_wrong_output_makes_the_export_fail_loudly_and_leaves_no_file(sat, monkeypatch,
                                                                         tmp_path):
    model_dir, _ = sat
    real = ex.run_session
    monkeypatch.setattr(ex, "run_session",
                        lambda session, feeds: [o + 1e-3 for o in real(session, feeds)])
    out = tmp_path / "sat.onnx"
    with pytest.raises(ModelError, match=r"logits of chunk 1 differs from PyTorch by 0\.001"):
        export_onnx(model_dir, out)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_export_writes_only_the_file(vit, sat):
    for _, path in (vit, sat):
        assert sorted(p.name for p in path.parent.iterdir()) == sorted(["model", path.name])


def test_onnx_tagger_tags_files_as_the_pytorch_tagger(vit, write_wav):
    model_dir, path = vit
    rng = np.random.default_rng(0)
    wav = write_wav("mix.wav", seconds=1.5, data=(0.3 * rng.standard_normal(24000)).astype(
        np.float32))
    ref, tagger = earmark.load(model_dir), load_onnx(path)
    assert tagger.labels == LABELS and tagger.sample_rate == 16000
    got, want = tagger.tag(wav, top_k=3), ref.tag(wav, top_k=3)
    assert [label for label, _ in got] == [label for label, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=ATOL)
    chunks, ref_chunks = tagger.chunk_scores(wav, 0.5), ref.chunk_scores(wav, 0.5)
    assert [(c.start, c.end) for c in chunks] == [(c.start, c.end) for c in ref_chunks]
    for c, r in zip(chunks, ref_chunks):
        torch.testing.assert_close(c.scores, r.scores, atol=ATOL, rtol=0)


def test_onnx_sat_tagger_scores_chunks_through_the_primed_cache(sat):
    model_dir, path = sat
    model, tagger = earmark.load(model_dir).model, load_onnx(path)
    wave = _noise(16000 + 6000)  # one chunk and a short tail, which is dropped
    short = _noise(7000)  # a single short chunk is zero-padded
    with torch.no_grad():
        full = model.forward_chunk(wave[None, :16000], model.prime_cache(1))[0]
        padded = model.forward_chunk(torch.nn.functional.pad(short, (0, 9000))[None],
                                     model.prime_cache(1))[0]
    torch.testing.assert_close(tagger.scores(wave), full.sigmoid()[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(tagger.scores(short), padded.sigmoid()[0], atol=ATOL, rtol=0)


def test_metadata_round_trip(vit, sat):
    model_dir, path = vit
    config = json.loads((model_dir / "config.json").read_text())
    meta = onnx_metadata(path)
    assert meta["config"]["labels"] == LABELS
    assert meta["config"]["sample_rate"] == 16000
    assert meta["config"]["frontend"] == config["frontend"]
    assert meta["config"]["name"] == "vit-tiny"
    assert {p.key for p in onnx.load(str(path)).metadata_props} >= {
        "earmark.config", "earmark.export", "earmark.check"}
    m = OnnxModel(sat[1])
    assert (m.registry_name, m.family, m.num_classes, m.sample_rate) == ("sat-tiny", "vit", 3,
                                                                         16000)
    assert (m.multi_label, m.chunk_seconds, m.cache_tokens) == (True, 1.0, 24)
    assert m.eval() is m and m.to("cpu") is m


def test_an_onnx_tagger_streams_in_the_chunk_its_pytorch_model_does(vit, tmp_path):
    # a clip graph: a full-context model's 1 s; a stream graph: the chunk it was exported in
    assert load_onnx(vit[1]).chunk_seconds == earmark.load(vit[0]).chunk_seconds == 1.0
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 3, depth=1, embed_dim=48, num_heads=3,
                                 chunk_seconds=2.0).eval()
    tagger = load_onnx(export_onnx(model, tmp_path / "sat2.onnx", check=False, labels=LABELS))
    assert tagger.chunk_seconds == 2.0 and tagger.stream().chunk_samples == 32000
    assert onnx_metadata(tmp_path / "sat2.onnx")["export"]["chunk_samples"] == 32000


def test_inputs_outside_the_graph_range(vit):
    _, path = vit
    model = OnnxModel(path)
    lo, hi = model.export_info["min_samples"], model.export_info["max_samples"]
    with pytest.raises(ModelError, match=rf"vit\.onnx: the graph takes at least {lo} samples"):
        model(torch.zeros(1, lo - 1))
    # longer than one pass: windows of window_samples, the last ending at the end, averaged
    n, w = hi + 3000, model.export_info["window_samples"]
    wave = _noise(1, n)
    parts = [model.activation(model(wave[:, s:s + w])) for s in (0, n - w)]
    torch.testing.assert_close(model.activation(model(wave)), torch.stack(parts).mean(0),
                               atol=1e-6, rtol=0)
    with pytest.raises(ModelError, match="needs a streaming"):
        model.prime_cache()


def test_a_foreign_onnx_file_is_refused(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("x", onnx.TensorProto.FLOAT, [1])],
                                   [value("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    model = onnx.helper.make_model(graph, ir_version=9,
                                   opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError, match="foreign.onnx: not an earmark ONNX export"):
        load_onnx(path)


def test_export_command_and_load_of_an_onnx_file(tmp_path, capsys):
    import torch

    import earmark
    from earmark.cli import main
    from earmark.models.directory import save_model_dir

    torch.manual_seed(0)
    m = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=48, num_heads=3,
                             clip_seconds=1.0).eval()
    model_dir = save_model_dir(m, tmp_path / "vit", ["a", "b"])
    assert main(["export", str(model_dir), "--format", "onnx", str(tmp_path / "m.onnx")]) == 0
    assert "onnxruntime matches PyTorch within" in capsys.readouterr().out
    wave = torch.randn(16000) * 0.1
    torch.testing.assert_close(earmark.load(tmp_path / "m.onnx").scores(wave),
                               earmark.load(model_dir).scores(wave), atol=1e-4, rtol=0)


INT8_MODELS = {  # small enough to export in seconds; the matrices dominate
    "vit-tiny": {"depth": 2, "clip_seconds": 1.0},
    "sat-tiny": {"depth": 2, "chunk_seconds": 1.0},
    "htsat-tiny": {"clip_seconds": 1.0},
    "tasr-4l-4t-8h": {"layers": 2, "clip_seconds": 1.0},
}


@pytest.mark.parametrize("name", list(INT8_MODELS))
def test_int8_export_is_smaller_reports_its_score_difference_and_tags(name, tmp_path, capsys):
    import os

    import earmark
    from earmark.cli import main
    from earmark.infer.onnx import onnx_metadata
    from earmark.models.directory import save_model_dir

    torch.manual_seed(0)
    model = earmark.create_model(name, 4, **INT8_MODELS[name]).eval()
    model_dir = save_model_dir(model, tmp_path / "m", ["a", "b", "c", "d"])
    assert main(["export", str(model_dir), str(tmp_path / "f.onnx")]) == 0
    assert main(["export", str(model_dir), str(tmp_path / "q.onnx"), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8: scores within" in out
    quant = onnx_metadata(tmp_path / "q.onnx")["quantization"]
    assert quant["clips"] == 16 and 0 <= quant["max_abs_score_diff"] < 0.1
    assert quant["top1_agreement"] >= 0.75
    assert onnx_metadata(tmp_path / "f.onnx")["quantization"] is None
    assert os.path.getsize(tmp_path / "q.onnx") < 0.5 * os.path.getsize(tmp_path / "f.onnx")
    # no Python stack traces (with this machine's paths) in either file
    assert b"stack_trace" not in (tmp_path / "f.onnx").read_bytes()
    # convolutions keep float arithmetic on int8-stored weights
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "ConvInteger" not in ops and {"Conv", "DequantizeLinear"} <= ops
    # the int8 file tags and streams like the float one (cache in float)
    fp, q8 = earmark.load(tmp_path / "f.onnx"), earmark.load(tmp_path / "q.onnx")
    wave = torch.randn(32000) * 0.1
    torch.testing.assert_close(q8.scores(wave), fp.scores(wave), atol=0.1, rtol=0)
    if name == "sat-tiny":
        session = q8.stream()
        assert len(session.push(wave) + session.flush()) == 2


def test_int8_score_difference_takes_stream_clips_shorter_than_a_chunk(tmp_path):
    import earmark
    from earmark.infer.onnx import onnx_metadata

    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 3, depth=1, chunk_seconds=1.0).eval()
    clips = [torch.randn(8000) * 0.1, torch.randn(20000) * 0.1]  # half a chunk, 1.25 chunks
    out = export_onnx(model, tmp_path / "q.onnx", quantize="int8", clips=clips)
    quant = onnx_metadata(out)["quantization"]
    assert quant["clips"] == 2 and 0 <= quant["max_abs_score_diff"] < 0.1
