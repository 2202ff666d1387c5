"""Training on real recordings and synthetic voices together, and group-adversarial training
(a head that must not tell the speakers apart)."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import earmark
from earmark.cli import main
from earmark.data.sources import from_spec
from earmark.errors import DataError, ModelError
from earmark.train.adversarial import PooledEmbedding, reverse_gradient
from earmark.train.config import TrainConfig
from earmark.train.run import train
from earmark.train.rundir import resume_differences
from earmark.train.stages import prepare_run

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Real data (synth clips, with three speakers in a manifest of its own) and "synthetic
    voices": copies of some real training clips under other names and groups."""
    from earmark.data.synth import synthesize

    root = tmp_path_factory.mktemp("synthetic")
    data = synthesize(root / "real", clips_per_class=3, clip_seconds=0.5, soundscapes=0)
    real = from_spec(f"synth:{data}")
    with open(root / "speakers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "split", "group"])
        for i, it in enumerate(real.items):
            w.writerow([it.path, it.labels[0], it.split, f"speaker{i % 3}"])
    voices = root / "voices"
    voices.mkdir()
    rows = []
    for i, it in enumerate(real.split("train").items):
        shutil.copy(it.path, voices / f"word{i}.wav")
        rows.append([f"word{i}.wav", it.labels[0], f"voice{i % 4}"])
    write_manifest(voices / "manifest.csv", rows)
    return {"synth": f"synth:{data}", "speakers": f"manifest:{root / 'speakers.csv'}",
            "voices": f"manifest:{voices / 'manifest.csv'}", "root": root}


def write_manifest(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels", "group"])
        w.writerows(rows)


def config(world, out, **kw):
    base = dict(data=world["speakers"], out=str(out), model="vit-tiny", model_args=TINY,
                clip_seconds=0.5, epochs=1, batch_size=8, warmup_epochs=0, progress=False,
                synthetic=world["voices"], synthetic_share=0.3)
    return TrainConfig(**{**base, **kw})


def paths(loader) -> set[str]:
    return {it.path for it in loader.dataset.manifest.items}


# ---- real and synthetic ------------------------------------------------------------------


def test_synthetic_items_train_only_and_never_validate_or_test(world, tmp_path):
    setup = prepare_run(config(world, tmp_path / "run"))
    voices = {it.path for it in from_spec(world["voices"]).items}
    train, valid = paths(setup.train_loader), paths(setup.valid_loader)
    assert voices <= train
    assert not voices & valid
    assert not voices & {it.path for it in setup.test.items}
    real_train = len(train) - len(voices)
    assert len(setup.train_loader.sampler) == real_train  # an epoch: the real items' count
    # items keep their groups; the vocabulary is the real data's
    groups = {it.group for it in setup.train_loader.dataset.manifest.items}
    assert {"voice0", "voice3", "speaker0"} <= groups
    assert setup.labels == from_spec(world["speakers"]).labels


def test_synthetic_labels_outside_the_vocabulary_are_named_with_the_spec(world, tmp_path):
    voices = world["root"] / "voices"
    write_manifest(voices / "odd.csv", [["word0.wav", "banjo", "voice0"],
                                        ["word1.wav", "siren", "voice1"]])
    spec = f"manifest:{voices / 'odd.csv'}"
    with pytest.raises(DataError, match=r"odd\.csv.*not in the vocabulary.*'banjo'") as err:
        prepare_run(config(world, tmp_path / "run", synthetic=spec))
    assert "siren" not in str(err.value)


def test_synthetic_share_needs_synthetic_items_and_a_fraction():
    with pytest.raises(ValueError, match="give --synthetic SPEC"):
        TrainConfig(data="x", out="r", synthetic_share=0.3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        TrainConfig(data="x", out="r", synthetic="manifest:v.csv", synthetic_share=1.3)
    with pytest.raises(ValueError, match="stage 'finetune'"):
        TrainConfig(data="x", out="r", stage="mae", group_adversarial=1.0)


@pytest.fixture(scope="module")
def mixed_run(world, tmp_path_factory):
    """Real and synthetic through the command line, no group head."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    assert main(["train", "--data", world["synth"], "--out", str(out), "--model", "vit-tiny",
                 "--model-arg", "depth=1", "--model-arg", "embed_dim=32",
                 "--model-arg", "num_heads=2", "--clip-seconds", "0.5", "--epochs", "1",
                 "--batch-size", "8", "--synthetic", world["voices"],
                 "--synthetic-share", "0.3", "--no-progress"]) == 0
    return out


def test_train_with_synthetic_voices_records_them_in_the_run(mixed_run, world):
    saved = json.loads((mixed_run / "train_config.json").read_text())
    assert saved["synthetic"] == world["voices"] and saved["synthetic_share"] == 0.3
    assert saved["group_adversarial"] == 0.0
    metrics = json.loads((mixed_run / "metrics.json").read_text())
    assert metrics["test"]["num_clips"] == len(from_spec(world["synth"]).split("test"))


def test_resume_keeps_the_runs_synthetic_settings():
    saved = TrainConfig(data="x", out="r", synthetic="manifest:a.csv", synthetic_share=0.3)
    given = TrainConfig(data="x", out="r", synthetic="manifest:b.csv", synthetic_share=0.5,
                        group_adversarial=0.1)
    assert resume_differences(saved, given, {"synthetic", "synthetic_share",
                                             "group_adversarial"}) == [
        "--synthetic 'manifest:b.csv' (the run has 'manifest:a.csv')",
        "--synthetic-share 0.5 (the run has 0.3)",
        "--group-adversarial 0.1 (the run has 0.0)"]


def test_synthetic_voices_alone_train_and_validate_on_some_of_them(world, tmp_path):
    """A manifest without a split column: every item trains, a seeded tenth validates, and
    there is no test split (the real recordings are scored apart, with earmark eval)."""
    result = train(config(world, tmp_path / "run", data=world["voices"], synthetic=None,
                          synthetic_share=None))
    assert "test" not in result
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    assert [float(r["val/clips"]) for r in rows if r.get("val/clips")] == [1.0]


# ---- group-adversarial training ----------------------------------------------------------


def test_gradient_reversal_is_the_identity_forward_and_flips_the_gradient_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.7 * torch.arange(3.0).expand(4, 3))


@pytest.mark.parametrize("name, args, seconds", [
    ("vit-tiny", TINY, 0.5),
    ("sat-tiny", {**TINY, "chunk_seconds": 1.0}, 1.0),
    ("tesc-4l-nt-8h", {"layers": 1, "heads": 2, "embed_dim": 24}, 1.0),
    ("htsat-tiny", {"depths": (1, 1, 1, 1), "embed_dim": 8, "num_heads": (1, 1, 1, 1)}, 1.0),
])
def test_each_family_with_a_pooled_embedding_gives_it_with_its_gradient(name, args, seconds):
    model = earmark.create_model(name, 3, clip_seconds=seconds, **args).train()
    pooled = PooledEmbedding(model)
    model(torch.randn(2, round(seconds * model.sample_rate)))
    embedding = pooled.take(2)
    assert embedding.shape == (2, pooled.dim)
    embedding.sum().backward()  # reaches the first layer: the head can move the whole model
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.patch_embed.parameters())
    model.eval()(torch.randn(1, round(seconds * model.sample_rate)))
    assert pooled.seen == []  # scoring in evaluation keeps nothing


def test_a_family_without_a_pooled_embedding_is_refused_by_name(world, tmp_path):
    with pytest.raises(ModelError, match="'codebook' family does not have"):
        prepare_run(config(world, tmp_path / "run", model="codebook", model_args={},
                           synthetic_share=None, group_adversarial=1.0))


@pytest.fixture(scope="module")
def adversarial_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("adversarial") / "run"
    train(config(world, out, group_adversarial=1.0, group_adversarial_ramp=False, epochs=2))
    return out


def test_group_adversarial_training_logs_the_group_loss(adversarial_run):
    rows = list(csv.DictReader(open(adversarial_run / "logs" / "metrics.csv")))
    losses = [float(r["train/group_loss_epoch"]) for r in rows if r.get("train/group_loss_epoch")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert {float(r["train/group_weight"]) for r in rows if r.get("train/group_weight")} == {1.0}
    saved = json.loads((adversarial_run / "train_config.json").read_text())
    assert saved["group_adversarial"] == 1.0


def test_the_saved_model_has_no_group_head(adversarial_run, mixed_run, world):
    """The model directory of an adversarial run is that of a plain run: same keys, same
    config; the head is in the training checkpoints only."""
    keys = set(load_file(adversarial_run / "model" / "model.safetensors"))
    assert keys == set(load_file(mixed_run / "model" / "model.safetensors"))
    config = json.loads((adversarial_run / "model" / "config.json").read_text())
    plain = json.loads((mixed_run / "model" / "config.json").read_text())
    assert config["args"] == plain["args"] and config["family"] == plain["family"]
    ckpt = torch.load(adversarial_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("group_head.") for k in ckpt["state_dict"])
    clip = from_spec(world["speakers"]).split("test").items[0].path
    assert len(earmark.load(adversarial_run).tag(clip, top_k=2)) == 2


def test_group_adversarial_training_needs_two_groups(world, tmp_path):
    with pytest.raises(DataError, match="at least two groups"):
        prepare_run(config(world, tmp_path / "run", data=world["synth"], synthetic=None,
                           synthetic_share=None, group_adversarial=1.0))


def train_options(argv: list[str]) -> TrainConfig:
    from earmark.cli import build_parser
    from earmark.cli.training import train_config

    a = build_parser().parse_args(["train", *argv])
    a.argv = ["train", *argv]
    return train_config(a)


def test_the_voices_recipe_is_the_robust_one_with_a_tenth_of_each_batch_synthetic():
    from earmark.train.recipes import RECIPES

    base = ["--data", "fsdd:x", "--out", "r", "--recipe", "voices"]
    config = train_options(base + ["--synthetic", "manifest:v/manifest.csv"])
    assert (config.synthetic, config.synthetic_share) == ("manifest:v/manifest.csv", 0.1)
    robust = TrainConfig.from_dict(dict(TrainConfig(data="x").to_dict(), **RECIPES["robust"]))
    assert ({k: getattr(config, k) for k in RECIPES["robust"]}
            == {k: getattr(robust, k) for k in RECIPES["robust"]})
    assert config.epochs == 60 and config.speed > 0 and config.vtlp > 0
    # a share typed out wins over the recipe's
    assert train_options(base + ["--synthetic", "manifest:v.csv", "--synthetic-share",
                                 "0.3"]).synthetic_share == 0.3


def test_the_voices_recipe_without_voices_is_a_usage_error_naming_what_is_missing(capsys):
    with pytest.raises(SystemExit) as err:
        train_options(["--data", "fsdd:x", "--out", "r", "--recipe", "voices"])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "recipe 'voices'" in message and "give --synthetic SPEC" in message, message
