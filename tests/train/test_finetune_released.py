"""Fine-tuning from a released checkpoint by name (``train --init NAME``), with no network
beyond 127.0.0.1: the server of ``tests/test_pretrained.py`` serves small checkpoints in the
official layouts (a SAT-T of one block; an HTS-AT of one block per group), and the release
table gets rows that point at them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

import earmark
from earmark.cli import build_parser, main
from earmark.cli.training import train_config
from earmark.data.dataset import ClipDataset
from earmark.errors import ModelError
from earmark.models import pretrained
from earmark.models.convert import audioset_labels
from earmark.models.pretrained import Release
from earmark.train.config import TrainConfig
from earmark.train.run import train
from earmark.train.stages import prepare_run
from earmark.train.weights import head_keys
from tests.test_pretrained import cache, checkpoint_bytes, reference, server  # noqa: F401

NAME = "sat-tiny-test-audioset"
FILE = "SAT_T_test_finetune.pt"
HTSAT_NAME = "htsat-audioset"  # the real row's name: the recipe's command works from it
HTSAT_FILE = "HTSAT_test_finetune.ckpt"
HTSAT_ARGS = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2])


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from earmark.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), clips_per_class=10, clip_seconds=1.0,
                      soundscapes=0, seed=3)


def calibrated(model, synth_dir):
    """``model`` with the batch-norm statistics of audio like the synthetic set's, as a
    released model has those of the audio it was trained on (a fresh one has 0 and 1)."""
    from earmark.data.sources import from_spec

    train_items = from_spec(f"synth:{synth_dir}").split("train")
    ds = ClipDataset(train_items, model.sample_rate, 1.0, train=False, fit="repeat")
    waves = torch.stack([ds[i][0] for i in range(len(ds))])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum, momentum = None, m.momentum  # a plain average over the batches
            model.train()
            with torch.no_grad():
                model(waves)
            m.momentum = momentum
    return model.eval()


@pytest.fixture
def released(server, cache, monkeypatch, synth_dir):  # noqa: F811
    """The name of a served SAT-T checkpoint (527 AudioSet outputs) and its model."""
    model = calibrated(reference(seed=5), synth_dir)
    server.files[f"/files/{FILE}"] = checkpoint_bytes(model)
    row = Release(name=NAME, kind="sat-official", model="sat-tiny", file=FILE,
                  url=f"{server.base}/files/{FILE}", page=f"{server.base}/files",
                  paper_map=0.0, evaluation="none", licence="test",
                  args={"pooling": "mean", "depth": 1}, convert_args={"chunk_seconds": 1.0})
    monkeypatch.setitem(pretrained.RELEASES, NAME, row)
    return NAME, model


def config(synth_dir, out, **kw):
    base = dict(data=f"synth:{synth_dir}", out=str(out), init=NAME, clip_seconds=1.0,
                epochs=8, batch_size=16, lr=3e-3, warmup_epochs=0, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def split_scores(model, manifest) -> tuple[float, float]:
    """(cross-entropy, accuracy) of ``model`` on the clips of ``manifest``."""
    ds = ClipDataset(manifest, model.sample_rate, 1.0, train=False, fit="repeat")
    waves, targets = zip(*(ds[i] for i in range(len(ds))))
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack(waves))
    target = torch.stack(targets)
    loss = F.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(1) == target.argmax(1)).float().mean().item()
    return loss, accuracy


def test_finetuning_a_served_checkpoint_by_name_improves_on_where_it_started(
        released, synth_dir, tmp_path, server):  # noqa: F811
    cfg = config(synth_dir, tmp_path / "run")
    start = prepare_run(cfg)
    # the architecture, front end and sample rate are the checkpoint's (no --model given)
    assert start.model.registry_name == "sat-tiny" and start.model.sample_rate == 16000
    assert start.model.frontend.config.to_dict() == released[1].frontend.config.to_dict()
    test = start.test
    before = split_scores(start.model, test)
    result = train(cfg)
    after = split_scores(earmark.load(tmp_path / "run" / "model").model, test)
    assert after[0] < before[0] * 0.8, (before, after)
    assert after[1] > before[1], (before, after)
    assert result["test"]["accuracy"] == pytest.approx(after[1], abs=1e-6)
    # pulled once, then read from the cache; the run records where it started
    assert len(server.gets(f"/files/{FILE}")) == 1
    provenance = earmark.load(tmp_path / "run").config["provenance"]
    assert provenance["init"] == NAME
    assert json.loads((tmp_path / "run" / "init.json").read_text())["source"] == NAME


def _folder_data(root, labels, per_label=3):
    """A folder: data set whose classes are ``labels`` (tones of differing pitch)."""
    for k, label in enumerate(labels):
        for i in range(per_label):
            t = np.arange(16000) / 16000
            x = 0.3 * np.sin(2 * np.pi * (300 + 200 * k + 10 * i) * t).astype(np.float32)
            (root / label).mkdir(parents=True, exist_ok=True)
            sf.write(root / label / f"{i}.wav", x, 16000)
    return root


def test_labels_the_checkpoint_knows_keep_its_head_rows(released, tmp_path):
    name, _ = released
    data = _folder_data(tmp_path / "data", ["dog", "Cat", "siren"])
    # multi-label, as the checkpoint: its scores are sigmoids of the same logits
    setup = prepare_run(TrainConfig(data=f"folder:{data}", out=str(tmp_path / "run"),
                                    init=name, multi_label=True, progress=False))
    report = setup.init
    assert report.labels == {"Cat": "Cat", "dog": "Dog", "siren": "Siren"}
    assert report.new_labels == [] and report.reinitialised == []
    assert set(report.mapped) == {"outputlayer.1.weight", "outputlayer.1.bias"}
    assert "head rows of 3 labels kept by name (Cat, dog <- Dog, siren <- Siren)" \
        in report.summary()
    # before training, the scores of those labels are the checkpoint's head outputs
    checkpoint = earmark.load(name).model
    rows = [audioset_labels().index(label) for label in ("Cat", "Dog", "Siren")]
    assert setup.labels == ["Cat", "dog", "siren"]
    wave = torch.randn(3, 160000)  # the checkpoint's 10 s: no fitting to the clip length
    model = setup.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(wave), checkpoint(wave)[:, rows])
        torch.testing.assert_close(model.activation(model(wave)),
                                   checkpoint.activation(checkpoint(wave))[:, rows])
    # labels it does not know get new rows beside the kept ones
    data = _folder_data(tmp_path / "more", ["dog", "my_own_sound"])
    setup = prepare_run(TrainConfig(data=f"folder:{data}", out=str(tmp_path / "run2"),
                                    init=name, multi_label=True, progress=False))
    assert setup.init.labels == {"dog": "Dog"} and setup.init.new_labels == ["my_own_sound"]
    with torch.no_grad():
        torch.testing.assert_close(setup.model.eval()(wave)[:, 0],
                                   checkpoint(wave)[:, audioset_labels().index("Dog")])


def test_a_frozen_backbone_keeps_the_checkpoint_and_trains_the_head(released, synth_dir,
                                                                   tmp_path):
    name, _ = released
    train(config(synth_dir, tmp_path / "run", freeze_backbone=True, epochs=2, lr=5e-3))
    start = earmark.load(name).model.state_dict()
    trained = earmark.load(tmp_path / "run").model
    head = head_keys(trained)
    assert head == {"outputlayer.1.weight", "outputlayer.1.bias"}
    state = trained.state_dict()
    # every backbone tensor, the batch-norm statistics included, is the checkpoint's
    assert "init_bn.running_mean" in state
    for key, value in state.items():
        if key not in head:
            torch.testing.assert_close(value, start[key], rtol=0, atol=0, msg=key)
    # the head learned: its rows differ from where they started (kept or fresh)
    again = prepare_run(config(synth_dir, tmp_path / "again", freeze_backbone=True))
    assert not torch.equal(state["outputlayer.1.weight"],
                           again.model.state_dict()["outputlayer.1.weight"])
    assert all(not p.requires_grad for n, p in again.model.named_parameters()
               if n not in head)


def test_the_backbone_learning_rate_scale_and_layer_decay_are_parameter_groups(
        released, synth_dir, tmp_path):
    setup = prepare_run(config(synth_dir, tmp_path / "run", backbone_lr_scale=0.1,
                               layer_decay=0.5, lr=1e-3))
    opt = setup.module.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    params = dict(setup.model.named_parameters())
    assert len(lr_of) == len(params)  # every parameter trains, once
    # one block (L = 1): the head at --lr, the final norm at the backbone's rate, the block
    # at 0.5 of that, the embeddings at 0.25
    assert lr_of[id(params["outputlayer.1.weight"])] == pytest.approx(1e-3)
    assert lr_of[id(params["outputlayer.0.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(params["blocks.0.attn.qkv.weight"])] == pytest.approx(0.5e-4)
    assert lr_of[id(params["patch_embed.proj.weight"])] == pytest.approx(0.25e-4)
    assert lr_of[id(params["time_pos_embed"])] == pytest.approx(0.25e-4)
    # weight decay stays off for norms, biases and position embeddings
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay_of[id(params["blocks.0.attn.qkv.weight"])] == 0.05
    assert decay_of[id(params["blocks.0.attn.qkv.bias"])] == 0.0
    # without the options: two groups at --lr, as before
    plain = prepare_run(config(synth_dir, tmp_path / "plain", lr=1e-3))
    groups = plain.module.configure_optimizers()["optimizer"].param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.05), (1e-3, 0.0)]


def test_fine_tuning_options_are_checked_and_a_bad_name_is_a_clear_error(
        released, synth_dir, tmp_path, server, capsys):  # noqa: F811
    with pytest.raises(ValueError, match="freeze_backbone keeps the backbone of --init"):
        TrainConfig(data="x", freeze_backbone=True)
    with pytest.raises(ValueError, match="layer_decay is a factor in"):
        TrainConfig(data="x", init="y", layer_decay=0.0)
    with pytest.raises(ValueError, match="stage 'mae' pretrains the whole encoder"):
        TrainConfig(data="x", stage="mae", backbone_lr_scale=0.1)
    with pytest.raises(ModelError, match=r"--init sat-tiny-test-audiosett: .*did you mean "
                                         r"sat-tiny-test-audioset"):
        prepare_run(config(synth_dir, tmp_path / "r", init="sat-tiny-test-audiosett"))
    with pytest.raises(ModelError, match=r"--init runs/nothing: no such path, so not a model "
                                         r"directory.*no released model has that name"):
        prepare_run(config(synth_dir, tmp_path / "r", init="runs/nothing"))
    assert main(["train", "--data", f"synth:{synth_dir}", "--out", str(tmp_path / "cli"),
                 "--init", "no-such-release", "--no-progress"]) == 2
    assert "--init no-such-release: no such path" in capsys.readouterr().err
    # offline, a release that is not cached says where to get it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EARMARK_OFFLINE", "1")
        with pytest.raises(ModelError, match=rf"--init {NAME}: {NAME}: {FILE} is not in "
                                             r"earmark's cache"):
            prepare_run(config(synth_dir, tmp_path / "r"))
    assert server.requests == []
    # a model whose front end is not the checkpoint's is refused
    with pytest.raises(ModelError, match=r"front end differs .* come from the checkpoint "
                                         r"\(16000 Hz\)"):
        prepare_run(config(synth_dir, tmp_path / "r", model="htsat-tiny"))


# ---- the HTS-AT recipe for ESC-50 from the released HTS-AT checkpoint ---------------------


@pytest.fixture
def released_htsat(server, cache, monkeypatch):  # noqa: F811
    """``htsat-audioset`` served as a small HTS-AT in the released Lightning layout."""
    torch.manual_seed(7)
    model = earmark.create_model("htsat", 527, **HTSAT_ARGS).eval()
    buffer = io.BytesIO()
    torch.save({"state_dict": {f"sed_model.{k}": v for k, v in model.state_dict().items()}},
               buffer)
    server.files[f"/files/{HTSAT_FILE}"] = buffer.getvalue()
    row = Release(name=HTSAT_NAME, kind="htsat-official", model="htsat", file=HTSAT_FILE,
                  url=f"{server.base}/files/{HTSAT_FILE}", page=f"{server.base}/files",
                  paper_map=0.0, evaluation="none", licence="test", args=HTSAT_ARGS)
    monkeypatch.setitem(pretrained.RELEASES, HTSAT_NAME, row)
    return model


def _esc50(root, labels=("dog", "rooster"), seconds=0.5):
    """An ESC-50 layout: one clip per class and fold."""
    rows = ["filename,fold,target,category,esc10,src_file,take\n"]
    t = np.arange(int(seconds * 44100)) / 44100
    (root / "audio").mkdir(parents=True)
    for fold in range(1, 6):
        for target, label in enumerate(labels):
            name = f"{fold}-{target}-A-{target}.wav"
            rows.append(f"{name},{fold},{target},{label},False,{target},A\n")
            x = 0.3 * np.sin(2 * np.pi * (400 + 300 * target) * t).astype(np.float32)
            sf.write(root / "audio" / name, x, 44100)
    (root / "meta").mkdir()
    (root / "meta" / "esc50.csv").write_text("".join(rows))
    return root


def test_the_htsat_esc50_recipe_starts_from_the_released_htsat(released_htsat, tmp_path,
                                                               capsys):
    data = _esc50(tmp_path / "ESC-50")
    argv = ["train", "--recipe", "htsat-esc50", "--init", "htsat-audioset", "--data",
            f"esc50:{data}", "--out", str(tmp_path / "runs" / "esc"), "--fold", "1"]
    a = build_parser().parse_args([*argv, "--batch-size", "2"])
    a.argv = [*argv, "--batch-size", "2"]
    cfg = train_config(a, a.fold)
    # the recipe's settings, the checkpoint's model
    assert (cfg.init, cfg.model, cfg.mixup, cfg.lr_schedule, cfg.batch_size, cfg.fold) == (
        "htsat-audioset", None, 0.5, "htsat", 2, 1)
    setup = prepare_run(cfg)
    model = setup.model
    assert model.registry_name == "htsat" and model.sample_rate == 32000
    assert {k: model.build_args()[k] for k in HTSAT_ARGS} == HTSAT_ARGS
    assert setup.labels == ["dog", "rooster"] and not model.multi_label
    assert setup.init.labels == {"dog": "Dog"} and setup.init.new_labels == ["rooster"]
    # the 44.1 kHz files are read at the checkpoint's 32 kHz, repeated to its 10 s
    wave, target = next(iter(setup.train_loader))
    assert wave.shape == (2, 320000) and target.shape == (2, 2)
    # it trains: one step lowers nothing by chance alone, so only check that it runs
    setup.module.train()
    loss = setup.module.loss(model(wave), target)
    loss.backward()
    assert torch.isfinite(loss) and model.tscam_conv.weight.grad is not None
    # and the command as a user types it runs (one epoch, two clips per step)
    assert main([*argv, "--epochs", "1", "--batch-size", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "init: " in out and "head rows of 1 labels kept by name (dog <- Dog)" in out
    assert earmark.load(tmp_path / "runs" / "esc").model.sample_rate == 32000


def test_a_run_from_a_released_name_resumes_with_its_settings(released, synth_dir, tmp_path,
                                                              server, capsys):  # noqa: F811
    out = tmp_path / "run"
    cfg = config(synth_dir, out, epochs=1, backbone_lr_scale=0.1)
    train(cfg)
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["init"], saved["model"], saved["backbone_lr_scale"]) == (NAME, None, 0.1)
    # a typed setting that differs from the run's is named and ignored; the run goes on
    given = config(synth_dir, out, epochs=2, backbone_lr_scale=0.5)
    result = train(given, resume=True, typed={"epochs", "backbone_lr_scale"})
    assert "ignoring --backbone-lr-scale 0.5 (the run has 0.1)" in capsys.readouterr().err
    assert result["epochs"] == 2
    assert len(server.gets(f"/files/{FILE}")) == 1  # the cache serves the resumed run


# ---- every family: the head by label, the blocks by depth ----------------------------------


@pytest.mark.parametrize("name, args, head", [
    ("tokenlearner", dict(layers=2, embed_dim=32, heads=2, tokens=4), {"head.weight",
                                                                       "head.bias"}),
    ("htsat-tiny", {}, {"tscam_conv.weight", "tscam_conv.bias"}),
    ("vit-tiny", dict(depth=2, embed_dim=32, num_heads=2), {"outputlayer.1.weight",
                                                           "outputlayer.1.bias"}),
])
def test_each_family_keeps_head_rows_by_label_and_orders_its_blocks(name, args, head,
                                                                   tmp_path):
    from earmark.models.directory import save_model_dir
    from earmark.train.module import layer_ids
    from earmark.train.weights import init_weights

    torch.manual_seed(0)
    source = earmark.create_model(name, 3, **args)
    saved = save_model_dir(source, tmp_path / name, ["Dog", "Cat", "Speech"])
    model = earmark.create_model(name, 2, **args)
    assert head_keys(model) == head
    report = init_weights(model, saved, ["cat", "my_sound"])
    assert report.labels == {"cat": "Cat"} and report.new_labels == ["my_sound"]
    assert set(report.mapped) == head and not report.reinitialised
    for key in head:  # the class dimension is the first of every head tensor here
        torch.testing.assert_close(model.state_dict()[key][0], source.state_dict()[key][1])
    ids, blocks = layer_ids(model, head)
    assert set(ids) == {n for n, _ in model.named_parameters()} - head
    depths = sorted(set(ids.values()))
    assert depths == list(range(blocks + 2))  # embeddings, every block, the final norm
    assert ids[next(iter(ids))] == 0  # the first parameter comes before the blocks
