"""Training augmentations through the trainer and the command line: seeded, configurable, and
never applied outside training."""

import numpy as np
import pytest
import torch

import earmark
from earmark.audio import augment
from earmark.cli import main
from earmark.evaluate.run import evaluate_model
from earmark.models.registry import create_model
from earmark.train.config import ACOUSTIC, TrainConfig
from earmark.train.module import TaggingModule
from earmark.train.recipes import RECIPES
from earmark.train.run import train
from tests.train.test_train import TINY, config, synth_dir  # noqa: F401 (fixture)

ROBUST = RECIPES["robust"]


def module(**settings) -> TaggingModule:
    model = create_model("vit-tiny", 3, clip_seconds=0.5, **TINY)
    return TaggingModule(model, TrainConfig(data="", **settings), ["a", "b", "c"], 10).train()


def test_the_same_seed_and_step_give_the_same_augmented_batch():
    wave, target = torch.randn(8, 8000), torch.eye(3)[torch.arange(8) % 3]
    m = module(seed=3, **ROBUST)
    w1, t1 = m.augment(wave, target, step=7)
    w2, t2 = m.augment(wave, target, step=7)
    assert torch.equal(w1, w2) and torch.equal(t1, t2)
    w3, _ = m.augment(wave, target, step=8)
    assert not torch.equal(w1, w3)
    w4, _ = module(seed=4, **ROBUST).augment(wave, target, step=7)
    assert not torch.equal(w1, w4)
    # VTLP and SpecAugment sit in the model's forward, VTLP drawing from the step's generator
    assert isinstance(m.model.spec_augment, torch.nn.Sequential)
    torch.manual_seed(0)
    m.augment(wave, target, step=7)
    s1 = m.model.spec_augment[0](m.model.frontend(wave))
    m.augment(wave, target, step=7)
    s2 = m.model.spec_augment[0](m.model.frontend(wave))
    assert torch.equal(s1, s2)


def test_every_augmentation_is_a_training_option():
    assert set(ACOUSTIC) == set(augment.EFFECTS)
    settings = TrainConfig(data="", noise_snr=[1.0, 2.0]).acoustic()
    assert settings["noise_snr"] == (1.0, 2.0)
    augment.AcousticAugment(16000, **settings)  # every field is one of its arguments


def test_no_augmentation_leaves_the_batch_alone():
    wave, target = torch.randn(4, 8000), torch.eye(3)[[0, 1, 2, 0]]
    w, t = module().augment(wave, target, step=0)
    assert torch.equal(w, wave) and torch.equal(t, target)
    assert module().model.spec_augment is None


def test_mixup_trains_single_label_data_with_mixed_targets():
    wave, target = torch.randn(8, 8000), torch.eye(3)[torch.arange(8) % 3]
    m = module(mixup=0.4)
    _, t = m.augment(wave, target, step=0)
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    assert ((t > 0).sum(1) >= 1).all() and not torch.equal(t, target)
    assert torch.isfinite(m.loss(m.model(wave), t))


@pytest.fixture(scope="module")
def robust_run(synth_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("robust")
    train(config(synth_dir, out, **{**ROBUST, "epochs": 1}))
    return out


def test_a_robust_run_saves_a_model_without_augmentation(robust_run):
    tagger = earmark.load(robust_run)
    assert tagger.model.spec_augment is None
    written = (robust_run / "train_config.json").read_text()
    assert '"vtlp": 0.5' in written and '"noise": 0.5' in written


def test_nothing_is_augmented_in_eval_tag_detect_or_stream(robust_run, synth_dir, monkeypatch):  # noqa: F811
    def refuse(*args, **kw):
        raise AssertionError("an augmentation ran outside training")

    for name in ("AcousticAugment.__call__", "WaveAugment.__call__", "VTLP.forward",
                 "SpecAugment.forward"):
        cls, attr = name.split(".")
        monkeypatch.setattr(getattr(augment, cls), attr, refuse)
    monkeypatch.setattr(augment, "mixup", refuse)
    monkeypatch.setattr("earmark.train.module.mixup", refuse)
    tagger = earmark.load(robust_run)
    manifest = earmark.data.sources.from_spec(f"synth:{synth_dir}").split("test")
    metrics = evaluate_model(tagger, manifest, progress=False)
    assert not metrics["failed"]
    clip = manifest.items[0].path
    first = tagger.scores(clip)
    assert np.allclose(first, tagger.scores(clip))  # the same scores every time
    tagger.tag(clip)
    tagger.detect(clip, threshold=0.5)
    wave = tagger.waveform(clip)
    session = tagger.stream()
    chunks = session.push(wave.numpy()) + session.flush()
    assert chunks


def no_training(monkeypatch) -> dict:
    """``earmark train`` up to the config: ``seen["config"]`` is what train() would get."""
    seen = {}

    def fake_train(cfg, resume=False, **kw):
        seen["config"] = cfg
        return {"stage": "finetune", "epochs": 0, "train_seconds": 0.0, "averaged": []}

    monkeypatch.setattr("earmark.train.run.train", fake_train)
    return seen


def test_train_options_and_the_robust_recipe_on_the_command_line(tmp_path, monkeypatch, capsys):
    seen = no_training(monkeypatch)
    args = ["train", "--data", "synth:x", "--out", str(tmp_path / "r")]
    assert main(args + ["--speed", "0.4", "--speed-range", "0.9,1.1", "--noise", "1",
                        "--noise-snr", "0,20", "--rir", str(tmp_path), "--reverb", "0.2",
                        "--vtlp", "0.3", "--eq", "0.5", "--band-limit", "0.1"]) == 0
    cfg = seen["config"]
    assert (cfg.speed, cfg.speed_range, cfg.noise, cfg.noise_snr) == (0.4, [0.9, 1.1], 1.0,
                                                                      [0.0, 20.0])
    assert (cfg.rir_dir, cfg.reverb, cfg.vtlp, cfg.eq) == (str(tmp_path), 0.2, 0.3, 0.5)
    # the recipe fills every augmentation; an option typed out wins, even at its default
    assert main(args + ["--recipe", "robust", "--noise", "0", "--rir", str(tmp_path)]) == 0
    cfg = seen["config"]
    assert cfg.noise == 0.0 and cfg.rir_dir == str(tmp_path)
    assert all(getattr(cfg, k) == ROBUST[k] for k in ACOUSTIC if k != "noise")
    # abbreviations are refused rather than guessed
    with pytest.raises(SystemExit) as err:
        main(args + ["--epoch", "5"])
    assert err.value.code == 2 and "unrecognized arguments: --epoch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(args + ["--speed-range", "1.2"])
    assert err.value.code == 2
    assert "expected LOW,HIGH, got '1.2'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(args + ["--speed-range", "1.2,0.9"])
    assert err.value.code == 2 and "speed_range" in capsys.readouterr().err


def test_recipe_yields_to_the_options_the_command_line_set(tmp_path, monkeypatch):
    seen = no_training(monkeypatch)
    default_lr = TrainConfig(data="x").lr
    # "--epochs=5" is one token; "--lr" repeats the default and still wins over the recipe's
    assert main(["train", "--data", "synth:x", f"--out={tmp_path / 'r'}", "--recipe",
                 "htsat-esc50", "--epochs=5", "--lr", str(default_lr)]) == 0
    cfg = seen["config"]
    assert RECIPES["htsat-esc50"]["lr"] != default_lr
    assert cfg.epochs == 5 and cfg.lr == default_lr
    assert cfg.mixup == RECIPES["htsat-esc50"]["mixup"]  # not typed: the recipe's
    assert cfg.batch_size == RECIPES["htsat-esc50"]["batch_size"]


def test_every_train_setting_is_an_option_with_the_configs_default():
    from dataclasses import fields

    from earmark.cli import build_parser
    from earmark.cli.training import train_config

    # (progress bars: on a terminal by default, so asked for here as the config's default)
    a = build_parser().parse_args(["train", "--data", "synth:x", "--out", "r", "--progress"])
    a.argv = []
    cfg = train_config(a)
    assert cfg == TrainConfig(data="synth:x", out="r")  # every default as the dataclass's
    ours = {f.name for f in fields(TrainConfig) if f.metadata.get("cli")}
    assert ours >= {"speed", "rir_dir", "cache_hours", "stage", "feature_views"}
    assert ours | {"model_args", "fold", "progress"} == {f.name for f in fields(TrainConfig)}
    assert all(f.metadata.get("help") for f in fields(TrainConfig) if f.metadata.get("cli"))
    # a setting given on the command line reaches the config, whatever its type
    a = build_parser().parse_args(["train", "--data", "synth:x", "--out", "r", "--cache-hours",
                                   "0.5", "--no-balanced", "--rir", "rooms", "--vtlp-range",
                                   "0.8,1.2", "--stage", "mae", "--decoder-depth", "2"])
    a.argv = []
    cfg = train_config(a)
    assert (cfg.cache_hours, cfg.balanced, cfg.rir_dir, cfg.vtlp_range, cfg.stage,
            cfg.decoder_depth) == (0.5, False, "rooms", [0.8, 1.2], "mae", 2)
