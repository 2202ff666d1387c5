import pytest
import torch

import earmark
from earmark.errors import ModelError
from earmark.models.directory import load_model_dir, save_model_dir

SMALL = dict(depth=2, embed_dim=64, num_heads=2)


def tiny(num_classes=5, **kw):
    torch.manual_seed(0)
    return earmark.create_model("vit-tiny", num_classes, **{**SMALL, **kw}).eval()


def test_registry_lists_the_three_vits_and_rejects_unknown_names():
    names = earmark.list_models()
    assert {"vit-tiny", "vit-small", "vit-base"} <= set(names)
    with pytest.raises(ModelError, match="unknown model 'vit-huge'"):
        earmark.create_model("vit-huge", 3)


@pytest.mark.parametrize("name,width,heads,params_m", [
    ("vit-tiny", 192, 3, 5.6), ("vit-small", 384, 6, 22.0), ("vit-base", 768, 12, 86.0)])
def test_paper_sizes(name, width, heads, params_m):
    m = earmark.create_model(name, 527)
    assert m.embed_dim == width and len(m.blocks) == 12
    assert m.blocks[0].attn.num_heads == heads
    # 16x16 patches over 64 mel bins x 1012 frames: 4 x 63 grid
    assert m.freq_pos_embed.shape == (1, width, 4, 1)
    assert m.time_pos_embed.shape == (1, width, 1, 63)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert abs(n - params_m) < 0.6  # paper 003 table 1 lists 5.6M, 22M and 86M


def test_waveform_to_logits_shapes_and_batch_consistency():
    m = tiny()
    x = torch.randn(3, 16000)
    out = m(x)
    assert out.shape == (3, 5)
    single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(out, single, atol=1e-5, rtol=1e-5)


def test_inputs_longer_than_the_model_are_split_and_scores_averaged():
    m = tiny(target_length=96)  # ~1 s of frames per piece
    spec = torch.randn(1, 64, 96 * 3)  # exactly three pieces: the official code drops the last
    pieces = spec.split(96, -1)
    expect = torch.stack([m.activation(m.forward_spectrogram(p)) for p in pieces[:2]]).mean(0)
    got = m.activation(m.forward_spectrogram(spec))
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-4)
    # a ragged tail is zero-padded (after the per-bin normalisation) and kept
    spec = torch.randn(1, 64, 96 * 2 + 40)
    normed = m.normalize(spec)
    parts = list(normed.split(96, -1))
    parts[-1] = torch.nn.functional.pad(parts[-1], (0, 56))
    expect = torch.stack([m.activation(m.forward_head(m.forward_features(p)))
                          for p in parts]).mean(0)
    torch.testing.assert_close(m.activation(m.forward_spectrogram(spec)), expect,
                               atol=1e-5, rtol=1e-4)


def test_token_pooling_and_patch_stride_overlap():
    m = tiny(pooling="token", patch_stride=[16, 8])
    assert m.cls_token.shape == (1, 1, 64)
    assert m(torch.randn(2, 16000)).shape == (2, 5)


def test_model_directory_round_trip_gives_identical_scores(tmp_path):
    m = tiny()
    labels = [f"c{i}" for i in range(5)]
    out = save_model_dir(m, tmp_path / "model", labels)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left behind
    loaded, config = load_model_dir(out)
    assert config["labels"] == labels and config["frontend"]["name"] == "sat"
    assert config["sample_rate"] == 16000 and config["name"] == "vit-tiny"
    x = torch.randn(2, 16000)
    torch.testing.assert_close(loaded(x), m(x))
    # saving again replaces the directory atomically
    save_model_dir(m, out, labels)
    assert load_model_dir(out)[1]["labels"] == labels


def test_weights_that_do_not_fit_name_the_file(tmp_path):
    out = save_model_dir(tiny(), tmp_path / "model", list("abcde"))
    cfg = (out / "config.json").read_text().replace('"num_classes": 5', '"num_classes": 6')
    (out / "config.json").write_text(cfg.replace('"e"', '"e", "f"'))
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model_dir(out)
    with pytest.raises(ModelError, match="not a model directory"):
        load_model_dir(tmp_path)


def test_reset_classifier_and_gradients_flow():
    m = tiny().train()
    m.reset_classifier(7)
    loss = m(torch.randn(2, 16000)).sum()
    loss.backward()
    assert m.outputlayer[1].out_features == 7
    assert m.patch_embed.proj.weight.grad.abs().sum() > 0


def test_patch_out_drops_tokens_only_in_training():
    m = tiny(time_patch_out=0.5)
    x = m.normalize(torch.randn(1, 64, 201))
    n_eval = m.forward_features(x).shape[1]
    m.train()
    assert m.forward_features(x).shape[1] < n_eval


def test_inputs_just_past_the_time_embeddings_are_split_not_refused():
    m = tiny()  # 63 time embeddings: at most 1023 frames in one pass
    assert m.max_frames == 1023
    assert m(torch.randn(1, 160 * 1025)).shape == (1, 5)  # 1026 frames


def test_token_learner_option_reduces_tokens_and_flops():
    from earmark.profile import profile_model

    base = tiny(depth=4)
    tl = tiny(depth=4, token_learner=4, patch_stride=[16, 16])
    assert tl.token_learner is not None and tl.token_learner_index == 2
    x = tl.normalize(torch.randn(1, 64, 401))
    assert tl.forward_features(x).shape == (1, 4, 64)  # 4 x 25 patches -> 4 learned tokens
    assert tl(torch.randn(2, 64000)).shape == (2, 5)
    f_base = profile_model(base, seconds=4.0, repeats=1)["flops"]
    f_tl = profile_model(tl, seconds=4.0, repeats=1)["flops"]
    assert f_tl < f_base
    with pytest.raises(ModelError, match="not available for streaming"):
        earmark.create_model("sat-tiny", 3, token_learner=8)
