import csv
import json
from pathlib import Path

import pytest
import torch

import earmark
from earmark.data.sources import from_spec
from earmark.data.splits import split_manifest
from earmark.errors import DataError
from earmark.train.config import TrainConfig
from earmark.train.module import warmup_cosine
from earmark.train.run import average_checkpoints, cross_validate, train

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "patch_stride": [16, 8]}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from earmark.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), clips_per_class=6, clip_seconds=0.5,
                      soundscapes=1, soundscape_seconds=2.0, seed=1)


def config(synth_dir, out, **kw):
    base = dict(data=f"synth:{synth_dir}", out=str(out), model="vit-tiny", model_args=TINY,
                clip_seconds=0.5, epochs=2, batch_size=16, lr=3e-3, warmup_epochs=0,
                progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def epoch_losses(run_dir):
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss_epoch")]
    return [float(r["train/loss_epoch"]) for r in rows]


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.01) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.01) == pytest.approx(0.505, abs=1e-3)
    assert warmup_cosine(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_train_writes_a_run_directory_and_the_loss_falls(synth_dir, tmp_path):
    out = tmp_path / "run"
    result = train(config(synth_dir, out, epochs=8, lr=5e-3))
    for rel in ("train_config.json", "checkpoints/last.ckpt", "logs/metrics.csv", "metrics.json",
                "model/config.json", "model/model.safetensors", "test_metrics.json"):
        assert (out / rel).is_file(), rel
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "train_config.json").read_text())["model"] == "vit-tiny"
    losses = epoch_losses(out)
    assert len(losses) == 8 and losses[-1] < losses[0] * 0.8
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
    # the exported model tags a raw file, and so do the run directory and the checkpoint
    clip = from_spec(f"synth:{synth_dir}").split("test").items[0].path
    for where in (out, out / "model", out / "checkpoints" / "last.ckpt"):
        tags = earmark.load(where).tag(clip, top_k=3)
        assert len(tags) == 3 and tags[0][1] >= tags[1][1]


def test_without_progress_bars_each_epoch_prints_one_line_on_stderr(synth_dir, tmp_path,
                                                                   capfd):
    import re

    train(config(synth_dir, tmp_path / "run", epochs=3))
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    number = r"-?\d+\.\d{4}"
    for k, line in enumerate(lines, 1):  # the metrics the bar would show, then the epoch's time
        assert re.fullmatch(rf"epoch {k}/3  train/loss {number}  val/loss {number}  "
                            rf"val/accuracy {number}  \d+\.\d s", line), line
    assert len(lines) == 3
    assert not re.search(r"^epoch \d", out, re.M)  # stdout stays the command's own
    # with progress bars, the bars report and no line is added
    train(config(synth_dir, tmp_path / "bars", epochs=1, progress=True))
    err = capfd.readouterr().err
    assert not [line for line in err.splitlines() if line.startswith("epoch ")]


def test_same_seed_same_weights(synth_dir, tmp_path):
    a = train(config(synth_dir, tmp_path / "a", epochs=1))
    b = train(config(synth_dir, tmp_path / "b", epochs=1))
    wa = earmark.load(a["model_dir"]).model.state_dict()
    wb = earmark.load(b["model_dir"]).model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], msg=k)


def test_resume_continues_where_the_run_stopped(synth_dir, tmp_path):
    out = tmp_path / "run"
    train(config(synth_dir, out, epochs=1))
    assert len(epoch_losses(out)) == 1
    result = train(config(synth_dir, out, epochs=3), resume=True)
    assert result["epochs"] == 3
    assert len(epoch_losses(out)) == 3  # epochs 1 and 2 added, epoch 0 not re-run
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config(synth_dir, tmp_path / "empty"), resume=True)


def test_top_k_checkpoint_averaging(tmp_path):
    paths = []
    for i, val in enumerate((1.0, 3.0)):
        p = tmp_path / f"{i}.ckpt"
        torch.save({"state_dict": {"model.w": torch.full((2,), val), "other": torch.ones(1),
                                   "model.n": torch.tensor(5)}}, p)
        paths.append(p)
    avg = average_checkpoints(paths)
    torch.testing.assert_close(avg["w"], torch.full((2,), 2.0))
    assert "other" not in avg and avg["n"].item() == 5


def test_cross_validation_over_folds(synth_dir, tmp_path):
    m = from_spec(f"synth:{synth_dir}")
    from dataclasses import replace

    folded = replace(m, items=[replace(it, fold=1 + i % 2) for i, it in enumerate(m.items)])
    path = folded.write(tmp_path / "folds.csv")
    cfg = config(synth_dir, tmp_path / "cv", data=f"manifest:{path}", epochs=1)
    summary = cross_validate(cfg)
    assert set(summary["folds"]) == {1, 2}
    assert set(summary["accuracy"]) == {"mean", "std"}
    assert (tmp_path / "cv" / "fold-1" / "model" / "config.json").is_file()
    assert (tmp_path / "cv" / "cv_metrics.json").is_file()


def test_two_cpu_processes_over_gloo(synth_dir, tmp_path):
    single = train(config(synth_dir, tmp_path / "one", epochs=1, accelerator="cpu"))
    result = train(config(synth_dir, tmp_path / "ddp", epochs=1, devices=2, accelerator="cpu"))
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    assert result["epochs"] == 1 and result["world_size"] == 2
    # each process sees half of the data, so an epoch takes half the optimizer steps
    assert result["steps"] * 2 == single["steps"]


def test_htsat_schedule_follows_the_released_code():
    from earmark.train.module import htsat_lr_factor

    got = [htsat_lr_factor(e) for e in (0, 1, 2, 3, 10, 11, 20, 21, 30, 31, 60)]
    assert got == pytest.approx([0.02, 0.05, 0.1, 0.1, 0.1, 0.05, 0.05, 0.02, 0.02, 0.03, 0.03])


def test_recipe_fills_the_paper_settings_but_explicit_options_win():
    from earmark.train.recipes import apply_recipe

    cfg = apply_recipe("htsat-esc50", TrainConfig(data="x", epochs=3), explicit={"epochs"})
    assert (cfg.model, cfg.mixup, cfg.lr_schedule, cfg.epochs) == ("htsat", 0.5, "htsat", 3)
    assert (cfg.time_mask * cfg.time_masks, cfg.freq_mask * cfg.freq_masks) == (128, 16)
    scv2 = apply_recipe("htsat-scv2", TrainConfig(data="x"), explicit=set())
    model = earmark.create_model(scv2.model, 35, **scv2.model_args)
    assert model.sample_rate == 16000 and model.frontend.config.hop_length == 160
    with pytest.raises(ValueError, match="unknown recipe"):
        apply_recipe("nope", cfg, set())


def test_htsat_tiny_trains_on_synthetic_events(synth_dir, tmp_path):
    result = train(config(synth_dir, tmp_path / "htsat", model="htsat-tiny", model_args={},
                          clip_seconds=1.0, lr_schedule="htsat", lr=1e-3, mixup=0.5,
                          time_mask=20, freq_mask=8, time_masks=2, freq_masks=2, epochs=1))
    tagger = earmark.load(result["model_dir"])
    assert tagger.sample_rate == 32000 and tagger.model.family == "htsat"
    clip, frames = tagger.model.forward_frames(torch.zeros(1, 32000))
    assert frames.shape == (1, 101, 8)


def test_early_stopping_ends_a_run_that_does_not_improve(synth_dir, tmp_path):
    # lr 0: the validation score never improves, so patience 1 stops after two epochs
    result = train(config(synth_dir, tmp_path / "es", epochs=10, lr=0.0, early_stopping=1))
    assert result["epochs"] == 2


def grouped_manifest(synth_dir, tmp_path, groups=("ann", "bob", "cy")):
    """The synth clips as a manifest file whose items take turns in ``groups``."""
    from dataclasses import replace

    m = from_spec(f"synth:{synth_dir}")
    items = [replace(it, group=groups[i % len(groups)]) for i, it in enumerate(m.items)]
    return replace(m, items=items).write(tmp_path / "grouped.csv")


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces training inside cross_validate: records what each run got, trains nothing."""
    import earmark.train.run as run

    calls = []

    def fake(cfg, resume=False, split=None, **kw):
        calls.append((cfg, split))
        Path(cfg.out).mkdir(parents=True)
        return {"test": {"accuracy": 0.5 + 0.1 * len(calls), "num_clips": len(split[2])}}

    monkeypatch.setattr(run, "train", fake)
    return calls


def test_leave_one_group_out_tests_each_group_on_a_model_that_never_saw_it(
        synth_dir, tmp_path, fake_train):
    path = grouped_manifest(synth_dir, tmp_path)
    everything = {it.path: it.group for it in from_spec(f"manifest:{path}")}
    cfg = config(synth_dir, tmp_path / "cv", data=f"manifest:{path}")
    summary = cross_validate(cfg, group_by="group")
    assert [Path(c.out).name for c, _ in fake_train] == ["ann", "bob", "cy"]
    for c, (train_m, valid_m, test_m) in fake_train:
        group = Path(c.out).name
        assert {it.path for it in test_m} == {p for p, g in everything.items() if g == group}
        seen = [it.path for it in (*train_m.items, *valid_m.items)]
        assert group not in {everything[p] for p in seen}
        assert len(seen) + len(test_m) == len(everything) and len(valid_m) >= 1
        assert c.fold is None and train_m.labels == test_m.labels  # the full vocabulary
        holdout = json.loads((Path(c.out) / "metrics.json").read_text())["holdout"]
        assert holdout == {"group_by": "group", "groups": [group], "items": len(test_m)}
    assert summary["group_by"] == "group" and summary["ungrouped"] == 0
    assert summary["folds"]["bob"]["groups"] == ["bob"] and summary["folds"]["bob"]["dir"] == "bob"
    assert summary["accuracy"]["mean"] == pytest.approx(0.7)
    assert summary["accuracy"]["std"] == pytest.approx(0.1)
    assert json.loads((tmp_path / "cv" / "cv_metrics.json").read_text()) == summary


def test_folds_of_groups_partition_the_groups(synth_dir, tmp_path, fake_train):
    path = grouped_manifest(synth_dir, tmp_path, groups=("a", "b", "c", "d", "e"))
    cfg = config(synth_dir, tmp_path / "cv", data=f"manifest:{path}")
    summary = cross_validate(cfg, group_by="group", folds=2)
    assert list(summary["folds"]) == ["fold-1", "fold-2"]
    held = [g for run in summary["folds"].values() for g in run["groups"]]
    assert sorted(held) == ["a", "b", "c", "d", "e"]
    for c, (_, _, test_m) in fake_train:
        groups = summary["folds"][Path(c.out).name]["groups"]
        assert {it.group for it in test_m} == set(groups)
    total = sum(run["items"] for run in summary["folds"].values())
    assert total == len(from_spec(f"manifest:{path}"))


def test_group_cross_validation_errors_are_clear(synth_dir, tmp_path, fake_train):
    path = grouped_manifest(synth_dir, tmp_path)
    cfg = config(synth_dir, tmp_path / "cv", data=f"manifest:{path}")
    with pytest.raises(ValueError, match="cannot group by 'speaker'"):
        cross_validate(cfg, group_by="speaker")
    with pytest.raises(DataError, match="cannot make 4 folds of 3 groups"):
        cross_validate(cfg, group_by="group", folds=4)
    plain = config(synth_dir, tmp_path / "cv")
    with pytest.raises(DataError, match=f"synth:{synth_dir}: no item has a group"):
        cross_validate(plain, group_by="group")
    assert not fake_train  # nothing trained


def test_an_empty_training_split_is_named_with_the_other_sizes(synth_dir):
    m = from_spec(f"synth:{synth_dir}")
    only_test = m.subset(lambda it: it.split == "test")
    n = len(only_test)
    with pytest.raises(DataError, match=rf"split 'train' is empty \(valid: 0, test: {n}\)"):
        split_manifest(only_test, None)


def test_a_run_of_no_epochs_or_empty_batches_is_a_usage_error(capsys, tmp_path):
    from earmark.cli import main

    for option in ("--epochs", "--batch-size"):
        with pytest.raises(SystemExit) as err:
            main(["train", "--data", "synth:x", "--out", str(tmp_path / "r"), option, "0"])
        assert err.value.code == 2
        name = option[2:].replace("-", "_")
        assert f"error: {name} must be at least 1, got 0" in capsys.readouterr().err
