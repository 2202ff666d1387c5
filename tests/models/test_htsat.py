import pytest
import torch

import earmark
from earmark.errors import ModelError
from earmark.models.convert import audioset_labels, convert
from earmark.models.htsat import (
    PatchMerge,
    merge_order,
    relative_position_index,
    shifted_window_mask,
    window_order,
    window_partition,
)


def tiny(num_classes=4, **kw):
    torch.manual_seed(0)
    return earmark.create_model("htsat-tiny", num_classes, **kw).eval()


def test_paper_configuration():
    m = earmark.create_model("htsat", 527)
    assert [len(g.blocks) for g in m.layers] == [2, 2, 6, 2]
    assert [g.blocks[0].attn.num_heads for g in m.layers] == [4, 8, 16, 32]
    assert m.patch_embed.proj.kernel_size == (4, 4) and m.num_features == 8 * 96
    assert m.layers[0].blocks[1].shift == 4 and m.layers[0].blocks[0].shift == 0
    # token-semantic module: kernel (F/8P, 3) = (2, 3), padding (0, 1), 8D -> C channels
    conv = m.tscam_conv
    assert (conv.in_channels, conv.out_channels) == (768, 527)
    assert conv.kernel_size == (2, 3) and conv.padding == (0, 1)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    assert 28 < n < 31  # paper 002, table 1: 28.8M (HTS-AT H) to 31M (HC)


def test_clip_and_frame_outputs():
    m = tiny()
    clip, frames = m.forward_frames(torch.randn(2, 32000 * 3))
    assert clip.shape == (2, 4)
    assert frames.shape == (2, 301, 4)  # one score per 10 ms hop
    assert ((frames >= 0) & (frames <= 1)).all()
    assert m.frame_seconds == pytest.approx(0.01)
    torch.testing.assert_close(m(torch.randn(2, 32000)).shape, torch.Size([2, 4]))


def test_clip_logits_are_the_mean_of_the_presence_map():
    m = tiny()
    spec = m.frontend(torch.randn(1, 320000))
    x = m.normalize(spec)
    presence = m.forward_features(m.to_image(x))
    assert presence.shape == (1, 4, 32)
    torch.testing.assert_close(m.forward_spectrogram(spec), presence.mean(-1))


def test_short_clips_are_repeated_to_fill_ten_seconds():
    m = tiny()
    one = torch.randn(1, 32000)
    spec = m.frontend(one)  # 101 frames -> repeated 10 times (paper 3.2.1)
    x = m.normalize(spec)
    expect = m.forward_features(m.to_image(x.repeat(1, 1, 10, 1))).mean(-1)
    torch.testing.assert_close(m(one), expect)


def test_long_inputs_are_windowed_and_merged():
    m = tiny()
    x = torch.randn(1, 32000 * 25)
    clip, frames = m.forward_frames(x)
    assert frames.shape[1] == 2501 and torch.isfinite(frames).all()
    spec = m.normalize(m.frontend(x))
    wins = [spec[:, :, s:s + 1001] for s in (0, 1001, 2501 - 1001)]
    probs = torch.stack([m.activation(m._window_outputs(w)[0]) for w in wins]).mean(0)
    torch.testing.assert_close(m.activation(clip), probs, atol=1e-5, rtol=1e-4)


def test_swin_helpers():
    idx = relative_position_index(2)
    assert idx.shape == (4, 4) and idx.max() == 8 and idx.diag().unique().tolist() == [4]
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds no wrapped tokens
    assert (mask[-1] == -100).any()


def test_window_and_merge_orders_are_the_rolls_partitions_and_concatenation():
    x = torch.randn(2, 8, 8, 3)
    rolled = torch.roll(x, (-2, -2), dims=(1, 2))
    expect = window_partition(rolled, 4).reshape(2, 64, 3)
    torch.testing.assert_close(x.view(2, 64, 3)[:, window_order(8, 8, 4, 2)], expect)
    merge = PatchMerge((8, 8), 3)
    got = merge.merge(x.view(2, 64, 3)[:, merge_order(8, 8)].reshape(2, 16, 12))
    torch.testing.assert_close(got, merge(x.view(2, 64, 3)))


@pytest.mark.parametrize("tokens", [64, 100, 2048, 10**6])
def test_inference_path_gives_the_eager_scores(tokens, monkeypatch):
    # steps of one window, a step that must shrink to a divisor, several windows, whole clips
    torch.manual_seed(0)
    m = earmark.create_model("htsat", 5, embed_dim=16, depths=(2, 2, 2, 2),
                             num_heads=(1, 2, 4, 8), window_size=8).eval()
    for group in m.layers:
        for blk in group.blocks:
            blk.window_tokens = tokens
    x = torch.randn(3, 32000 * 2)
    eager_clip, eager_frames = m.forward_frames(x)  # autograd on: the eager blocks
    assert eager_clip.requires_grad
    with torch.inference_mode():
        clip, frames = m.forward_frames(x)
    torch.testing.assert_close(clip, eager_clip.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(frames, eager_frames.detach(), atol=1e-5, rtol=0)
    # training keeps the eager path, whatever the grad mode
    group = type(m.layers[0])
    monkeypatch.setattr(group, "forward_windows",
                        lambda *a: pytest.fail("the inference path ran in training"))
    m.train()
    with torch.no_grad():
        assert m.layers[0](torch.randn(1, 64 * 64, 16)).shape == (1, 32 * 32, 32)


def official_state(model):
    """A state dict in the official Lightning checkpoint's layout, built from ``model``."""
    sd = {f"sed_model.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["sed_model.spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(513, 1, 1024)
    sd["sed_model.logmel_extractor.melW"] = torch.zeros(513, 64)
    sd["sed_model.head.weight"] = torch.zeros(model.num_classes, model.num_classes)
    sd["sed_model.head.bias"] = torch.zeros(model.num_classes)
    for name, buf in model.named_buffers():
        if name.endswith(("relative_position_index", "attn_mask")) and buf is not None:
            sd[f"sed_model.{name}"] = buf.clone()
    return {"state_dict": sd, "epoch": 3, "hyper_parameters": {}}


def test_convert_official_layout_gives_identical_scores(tmp_path):
    ref = earmark.create_model("htsat", 527, depths=(1, 1, 1, 1), embed_dim=16,
                               num_heads=(1, 2, 4, 8), drop_path_rate=0.0).eval()
    torch.save(official_state(ref), tmp_path / "official.ckpt")
    out = convert("htsat-official", tmp_path / "official.ckpt", tmp_path / "converted")
    tagger = earmark.load(out)
    assert tagger.labels == audioset_labels() and len(tagger.labels) == 527
    assert tagger.labels[0] == "Speech"
    assert tagger.model.init_args["depths"] == [1, 1, 1, 1]
    x = torch.randn(1, 32000 * 2)
    torch.testing.assert_close(tagger.model(x), ref(x))


def test_convert_refuses_foreign_or_damaged_checkpoints(tmp_path):
    ref = tiny(num_classes=3)
    sd = official_state(ref)
    del sd["state_dict"]["sed_model.norm.weight"]
    torch.save(sd, tmp_path / "broken.ckpt")
    with pytest.raises(ModelError, match="missing.*norm.weight"):
        convert("htsat-official", tmp_path / "broken.ckpt", tmp_path / "out",
                labels=["a", "b", "c"])
    torch.save(official_state(ref), tmp_path / "ok.ckpt")
    with pytest.raises(ModelError, match="3 classes; give their labels"):
        convert("htsat-official", tmp_path / "ok.ckpt", tmp_path / "out")
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ModelError, match="not an HTS-AT checkpoint"):
        convert("htsat-official", tmp_path / "other.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
