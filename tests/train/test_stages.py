"""The three training stages of paper 003: MAE -> full-context finetune -> SAT by PSL."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import earmark
from earmark.cli import build_parser, main
from earmark.errors import DataError, ModelError
from earmark.train.config import TrainConfig
from earmark.train.mae import PLACEHOLDER_LABEL, MAEDecoder, masked_reconstruction
from earmark.train.run import train
from earmark.train.stages import prepare_run
from earmark.train.weights import init_weights

TINY = {"depth": 1, "embed_dim": 48, "num_heads": 3}
HEAD = {"outputlayer.1.weight", "outputlayer.1.bias"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from earmark.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("stages"), clips_per_class=4, clip_seconds=1.0,
                      soundscapes=2, soundscape_seconds=4.0)


def config(data, out, **kw):
    base = dict(data=f"synth:{data}", out=str(out), model="vit-tiny", model_args=TINY,
                clip_seconds=1.0, epochs=1, batch_size=8, lr=3e-3, warmup_epochs=0,
                progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def mae_config(data, out, **kw):
    return config(data, out, stage="mae", decoder_dim=48, decoder_depth=1, decoder_heads=3, **kw)


@pytest.fixture(scope="module")
def mae_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mae") / "run"
    train(mae_config(data, out, epochs=6))
    return out


@pytest.fixture(scope="module")
def vit_run(data, mae_run, tmp_path_factory):
    """A multi-label ViT finetuned from the MAE encoder: the PSL teacher."""
    out = tmp_path_factory.mktemp("vit") / "run"
    train(config(data, out, init=str(mae_run), multi_label=True, epochs=2))
    return out


def sat_config(data, vit_run, out, **kw):
    psl = dict(stage="psl", model="sat-tiny", model_args={**TINY, "chunk_seconds": 1.0},
               teacher=str(vit_run), init=str(vit_run))
    return config(data, out, **{**psl, **kw})


def column(run, name):
    with open(run / "logs" / "metrics.csv") as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name)]


# ---- mae -----------------------------------------------------------------------------------


def test_mae_masks_three_quarters_and_the_encoder_sees_only_the_rest():
    encoder = earmark.create_model("vit-tiny", 1, **TINY)
    decoder = MAEDecoder.for_encoder(encoder, dim=48, depth=1, num_heads=3)
    seen = []
    encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    out = masked_reconstruction(encoder, decoder, torch.randn(3, 16000),
                                generator=torch.Generator().manual_seed(0))
    n = 4 * 6  # 64 mel bins / 16 x (101 frames - 16) // 16 + 1 for a 1 s clip
    assert out.mask.shape == (3, n) and out.mask.sum(1).tolist() == [18, 18, 18]
    assert seen == [torch.Size([3, 6, 48])]  # the 6 visible patches only
    assert out.pred.shape == out.target.shape == (3, n, 256)
    # a different mask per clip, and the targets are per-patch normalised
    assert not torch.equal(out.mask[0], out.mask[1])
    torch.testing.assert_close(out.target.mean(-1), torch.zeros(3, n), atol=1e-4, rtol=0)
    # the loss counts the masked patches only: perfect predictions there give zero
    exact = torch.where(out.mask.unsqueeze(-1), out.target, out.pred)
    per_patch = (exact - out.target).detach().pow(2).mean(-1)
    assert float((per_patch * out.mask).sum()) == 0.0 and float(per_patch.sum()) > 0


def test_mae_decoder_depth_follows_the_official_code():
    tiny = earmark.create_model("vit-tiny", 1, depth=1)
    small = earmark.create_model("vit-small", 1, depth=1)
    assert len(MAEDecoder.for_encoder(tiny).blocks) == 4
    decoder = MAEDecoder.for_encoder(small)
    assert len(decoder.blocks) == 8 and decoder.input_proj.out_features == 512


def test_mae_run_loss_falls_and_exports_the_encoder(mae_run):
    losses, val = column(mae_run, "train/loss_epoch"), column(mae_run, "val/loss")
    assert len(losses) == 6 and losses[-1] < 0.97 * losses[0]
    assert val[-1] < val[0]
    tagger = earmark.load(mae_run)
    assert tagger.labels == [PLACEHOLDER_LABEL] and tagger.config["provenance"]["stage"] == "mae"
    assert json.loads((mae_run / "metrics.json").read_text())["stage"] == "mae"
    assert not (mae_run / "test_metrics.json").exists()  # nothing to tag with
    # the checkpoint also holds the decoder, for resuming; the model directory does not
    ckpt = torch.load(mae_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("decoder.") for k in ckpt["state_dict"])
    assert not any(k.startswith("decoder.") for k in load_file(mae_run / "model" /
                                                               "model.safetensors"))


# ---- finetune from mae -----------------------------------------------------------------------


def test_finetune_init_loads_the_encoder_and_reinitialises_the_head(data, mae_run, tmp_path):
    setup = prepare_run(config(data, tmp_path / "ft", init=str(mae_run)))
    encoder = load_file(mae_run / "model" / "model.safetensors")
    state = setup.model.state_dict()
    assert set(setup.init.reinitialised) == HEAD and not setup.init.resized
    assert set(setup.init.loaded) == set(state) - HEAD
    for key in setup.init.loaded:
        torch.testing.assert_close(state[key], encoder[key], rtol=0, atol=0, msg=key)
    assert state["outputlayer.1.weight"].shape == (8, 48)
    assert encoder["outputlayer.1.weight"].shape == (1, 48)


def test_finetune_run_records_its_init(vit_run, mae_run):
    result = json.loads((vit_run / "metrics.json").read_text())
    assert result["init"].startswith(f"25 tensors from {mae_run}")
    report = json.loads((vit_run / "init.json").read_text())
    assert set(report["reinitialised"]) == HEAD
    provenance = earmark.load(vit_run).config["provenance"]
    assert provenance["stage"] == "finetune" and provenance["init"] == str(mae_run)


def test_init_from_a_different_architecture_names_the_keys(mae_run):
    model = earmark.create_model("vit-tiny", 8, depth=1, embed_dim=96, num_heads=3)
    with pytest.raises(ModelError, match="patch_embed.proj.weight"):
        init_weights(model, mae_run, ["x"] * 8)
    with pytest.raises(ModelError, match="not a model directory"):
        init_weights(model, mae_run / "nothing-here", ["x"] * 8)


def test_patch_out_and_stochastic_depth_reach_the_model(data, tmp_path):
    setup = prepare_run(config(data, tmp_path / "r", model_args={**TINY, "depth": 2},
                               time_patch_out=0.25, freq_patch_out=0.25, drop_path_rate=0.1))
    assert (setup.model.time_patch_out, setup.model.freq_patch_out) == (0.25, 0.25)
    assert setup.model.blocks[-1].drop_path1.p == pytest.approx(0.1)
    with pytest.raises(ModelError, match="does not take time_patch_out"):
        prepare_run(config(data, tmp_path / "h", model="htsat-tiny", model_args={},
                           time_patch_out=0.25))


# ---- psl --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*self.log.*")  # a training step outside a trainer
def test_psl_student_learns_the_teachers_probabilities_on_two_chunk_crops(data, vit_run,
                                                                          tmp_path):
    setup = prepare_run(sat_config(data, vit_run, tmp_path / "sat"))
    teacher = earmark.load(vit_run)
    assert setup.labels == teacher.labels and setup.model.multi_label
    # initialised from the ViT: same tensors, the time embedding cropped to chunk + cache
    vit = teacher.model.state_dict()
    student = setup.model.state_dict()
    assert setup.init.resized == ["time_pos_embed"] and not setup.init.reinitialised
    torch.testing.assert_close(student["blocks.0.attn.qkv.weight"], vit["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(student["time_pos_embed"], vit["time_pos_embed"][..., :12])

    wave, teacher_wave = next(iter(setup.train_loader))
    assert wave.shape == (8, 32000)  # 2 s crops for a 1 s chunk, at 16 kHz
    torch.testing.assert_close(teacher_wave, wave)
    module = setup.module
    with torch.no_grad():
        expected = teacher.model(wave).sigmoid()
        target = module.pseudo_labels(teacher_wave)
        torch.testing.assert_close(target, expected)
        assert ((target > 0.01) & (target < 0.99)).any()  # soft labels, not the data's 0/1
        module.model.eval()  # no dropout: the same logits twice
        loss = module.training_step((wave, teacher_wave), 0)
        torch.testing.assert_close(
            loss, F.binary_cross_entropy_with_logits(module.model(wave), expected))
    # the teacher is not trained and not saved with the student
    assert not any(k.startswith("teacher") for k in module.state_dict())
    assert all(not p.requires_grad for p in module.teacher.parameters())


def test_psl_run_through_the_command_line(data, vit_run, tmp_path, capsys):
    out = tmp_path / "sat"
    assert main(["train", "--stage", "psl", "--teacher", str(vit_run), "--init", str(vit_run),
                 "--data", f"synth:{data}", "--model", "sat-tiny", "--out", str(out),
                 "--model-arg", "chunk_seconds=1.0", "--model-arg", "depth=1",
                 "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3",
                 "--clip-seconds", "1", "--epochs", "1", "--batch-size", "8",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "psl: trained 1 epochs" in printed and "init: 27 tensors" in printed
    tagger = earmark.load(out)
    assert tagger.model.registry_name == "sat-tiny" and tagger.labels == earmark.load(
        vit_run).labels
    provenance = tagger.config["provenance"]
    assert (provenance["stage"], provenance["teacher"]) == ("psl", str(vit_run))
    assert provenance["crop_seconds"] == 2.0
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["stage"], saved["teacher"], saved["init"]) == ("psl", str(vit_run),
                                                                 str(vit_run))


def test_teacher_crops_are_resampled_to_the_teachers_rate(data):
    from earmark.data.dataset import ClipDataset
    from earmark.data.sources import from_spec
    from earmark.train.psl import TeacherCrops

    clips = ClipDataset(from_spec(f"synth:{data}"), 16000, 2.0, train=True)
    wave, teacher_wave = TeacherCrops(clips, 32000)[0]
    assert wave.shape == (32000,) and teacher_wave.shape == (64000,)
    assert teacher_wave.abs().max() > 0


# ---- errors -----------------------------------------------------------------------------------


def test_stage_errors_are_clear(data, vit_run, tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'pretrain'; known: mae, finetune, psl"):
        TrainConfig(data="x", stage="pretrain")
    with pytest.raises(ValueError, match="needs a teacher"):
        TrainConfig(data="x", stage="psl", model="sat-tiny")
    with pytest.raises(ValueError, match="without augmentation and mixup; unset mixup"):
        TrainConfig(data="x", stage="psl", teacher="t", mixup=0.5)
    with pytest.raises(ValueError, match="only used by stage 'psl'"):
        TrainConfig(data="x", teacher="t")
    with pytest.raises(ModelError, match="streaming SAT student.*'vit-tiny' is not one"):
        prepare_run(sat_config(data, vit_run, tmp_path / "r", model="vit-tiny",
                               model_args=TINY))
    with pytest.raises(ModelError, match="nope"):
        prepare_run(sat_config(data, tmp_path / "nope", tmp_path / "r"))
    with pytest.raises(ModelError, match="pretrains an audio ViT"):
        prepare_run(mae_config(data, tmp_path / "m", model="htsat-tiny", model_args={}))
    with pytest.raises(ModelError, match="--clip-seconds 1.9"):
        prepare_run(mae_config(data, tmp_path / "m", model="sat-tiny",
                               model_args={**TINY, "chunk_seconds": 1.0}, clip_seconds=4.0))


def test_psl_needs_labels_the_teacher_knows(data):
    from earmark.data.sources import from_spec
    from earmark.train.psl import to_vocabulary

    with pytest.raises(DataError, match="none of its labels"):
        to_vocabulary(from_spec(f"synth:{data}"), ["speech", "music"])


def test_cli_accepts_the_stage_options_and_rejects_bad_ones(capsys, tmp_path):
    from earmark.cli.training import train_config

    a = build_parser().parse_args(["train", "--data", "synth:x", "--out", "o", "--stage", "psl",
                                   "--teacher", "t", "--init", "i", "--model", "sat-tiny",
                                   "--time-patch-out", "0.25", "--drop-path-rate", "0.1"])
    a.argv = []
    cfg = train_config(a)
    assert (cfg.stage, cfg.teacher, cfg.init) == ("psl", "t", "i")
    assert cfg.regularisers() == {"time_patch_out": 0.25, "drop_path_rate": 0.1}
    a = build_parser().parse_args(["cv", "--data", "synth:x", "--out", "o", "--stage", "mae",
                                   "--mask-ratio", "0.5", "--decoder-depth", "2"])
    a.argv = []
    assert (train_config(a).mask_ratio, train_config(a).decoder_depth) == (0.5, 2)
    with pytest.raises(SystemExit) as err:
        main(["train", "--data", "synth:x", "--out", str(tmp_path), "--stage", "nope"])
    assert err.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["train", "--data", "synth:x", "--out", str(tmp_path), "--stage", "psl"])
    assert err.value.code == 2 and "needs a teacher" in capsys.readouterr().err


@pytest.fixture(scope="module")
def scored_shards(data, vit_run, tmp_path_factory):
    """The stage data as tar shards with the ViT teacher's scores stored beside them."""
    from dataclasses import replace

    import soundfile as sf

    from earmark.data.manifest import Item
    from earmark.data.shards import write_shards
    from earmark.data.sources import from_spec

    root = tmp_path_factory.mktemp("shards")
    m = from_spec(f"synth:{data}")
    long = []  # two 4 s clips, four clips of a class end to end: crops at 0, 1 and 2 s
    for k, label in enumerate(m.labels[:2]):
        parts = [sf.read(it.path, dtype="float32")[0] for it in m.items
                 if it.labels == (label,)][:4]
        sf.write(root / f"long{k}.wav", np.concatenate(parts), 16000)
        long.append(Item(str(root / f"long{k}.wav"), (label,), split="train"))
    out = root / "set"
    write_shards(replace(m, items=m.items + long), out, shard_size=200_000)
    assert main(["psl-scores", str(vit_run), "--data", f"shards:{out}", "--crop-seconds", "2",
                 "--no-progress"]) == 0
    return out


def test_stored_teacher_scores_are_the_teachers_on_a_grid_of_crops(scored_shards, vit_run):
    from earmark.data.scores import read_info, read_sidecar, sidecar
    from earmark.data.shards import read_shard

    info = read_info(scored_shards)
    teacher = earmark.load(vit_run)
    assert info["labels"] == teacher.labels and (info["crop_seconds"], info["hop_seconds"]) == (
        2.0, 1.0)
    found = [(shard, j, sample) for shard in sorted(scored_shards.glob("shard-*.tar"))
             for j, sample in enumerate(read_shard(shard)) if sample[2]["duration"] >= 4.0]
    assert found  # the soundscapes
    shard, j, (wave, rate, meta) = found[0]
    keys, offsets, scores = read_sidecar(sidecar(shard))
    assert str(keys[j]) == meta["key"] and rate == 16000
    rows = scores[offsets[j]:offsets[j + 1]]
    assert len(rows) == 3  # a 4 s soundscape: crops at 0, 1 and 2 s
    x = torch.from_numpy(wave).float()
    with torch.no_grad():
        expected = teacher.model(torch.stack([x[s:s + 32000] for s in (0, 16000, 32000)]))
    torch.testing.assert_close(torch.from_numpy(rows.astype("float32")), expected.sigmoid(),
                               atol=2e-3, rtol=0)  # stored as float16


def test_psl_learns_stored_scores_without_running_the_teacher(data, scored_shards, vit_run,
                                                               tmp_path, capsys):
    from dataclasses import replace

    from earmark.data.scores import read_sidecar, sidecar

    def stored(out, **kw):
        return replace(sat_config(data, vit_run, out, **kw), data=f"shards:{scored_shards}",
                       teacher=None, teacher_scores=True)

    cfg = stored(tmp_path / "sat")
    setup = prepare_run(cfg)
    assert setup.module.teacher is None and setup.labels == earmark.load(vit_run).labels
    wave, target = next(iter(setup.train_loader))
    assert wave.shape == (8, 32000) and target.shape == (8, len(setup.labels))
    rows = torch.cat([torch.from_numpy(read_sidecar(sidecar(p))[2].astype("float32"))
                      for p in scored_shards.glob("shard-*.tar")])
    assert all((rows == row).all(dim=1).any() for row in target)  # rows of the store
    result = train(cfg)
    assert result["epochs"] == 1 and "mAP" in result["test"]
    provenance = json.loads((tmp_path / "sat" / "model" / "config.json").read_text())
    assert provenance["provenance"]["teacher"] == str(vit_run)
    # scores of 2 s crops do not fit a student of 2 s chunks (4 s crops)
    with pytest.raises(ModelError, match="--crop-seconds 4.0"):
        prepare_run(stored(tmp_path / "sat2", model_args={**TINY, "chunk_seconds": 2.0}))
    assert main(["psl-scores", str(vit_run), "--data", f"shards:{scored_shards}",
                 "--crop-seconds", "4", "--no-progress"]) != 0
    assert "holds scores of other settings (crop_seconds" in capsys.readouterr().err
    with pytest.raises(DataError, match="beside tar shards"):
        prepare_run(replace(cfg, data=f"synth:{data}"))
