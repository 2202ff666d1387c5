import csv
import json

import pytest
import torch

import earmark
from earmark.data.manifest import from_spec
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
    for rel in ("config.json", "checkpoints/last.ckpt", "logs/metrics.csv", "metrics.json",
                "model/config.json", "model/model.safetensors", "test_metrics.json"):
        assert (out / rel).is_file(), rel
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "config.json").read_text())["model"] == "vit-tiny"
    losses = epoch_losses(out)
    assert len(losses) == 8 and losses[-1] < losses[0] * 0.8
    assert 0.0 <= result["test"]["accuracy"] <= 1.0
    # the exported model tags a raw file, and so do the run directory and the checkpoint
    clip = from_spec(f"synth:{synth_dir}").split("test").items[0].path
    for where in (out, out / "model", out / "checkpoints" / "last.ckpt"):
        tags = earmark.load(where).tag(clip, top_k=3)
        assert len(tags) == 3 and tags[0][1] >= tags[1][1]


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
