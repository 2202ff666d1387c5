"""Staged training of the codebook model on a tiny set, its model directory, inspection, and
the paths every earmark model takes (tag, profile, stream, export)."""

import csv
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import earmark
from earmark.cli import main
from earmark.data.sources import from_spec
from earmark.data.splits import split_manifest
from earmark.data.synth import synthesize
from earmark.errors import ModelError
from earmark.evaluate.codebook import code_statistics, plot_code, render_code
from earmark.models.codebook import FAMILIES
from earmark.train.codebook import HeadModule
from earmark.train.config import TrainConfig
from earmark.train.run import train

TINY = dict(codebook_size=8, ae_hidden=48, hidden=48, head_dropout=0.1)


def config(data, out, **kw) -> TrainConfig:
    args = dict(model="codebook", model_args=dict(TINY), epochs=6, batch_size=16, lr=3e-3,
                weight_decay=1e-4, warmup_epochs=0, ae_steps=60, ae_batch=64,
                kmeans_batch=256, kmeans_epochs=2, progress=False)
    return TrainConfig(data=data, out=str(out), **(args | kw))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("cb-data"), clips_per_class=6, clip_seconds=1.0,
                      soundscapes=4, soundscape_seconds=3.0, seed=3)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cb-run")
    result = train(config(f"synth:{data}", out))
    return out, result


def test_stages_run_in_order_and_losses_fall(run):
    out, result = run
    stages = out / "stages"
    ae = json.loads((stages / "autoencoder.safetensors.json").read_text())
    for name in FAMILIES:  # reconstruction error falls for every family
        assert ae["mse"][name][-1] < ae["mse"][name][0], name
    cb = json.loads((stages / "codebook.safetensors.json").read_text())
    assert set(cb["inertia"]) == set(FAMILIES)
    feats = load_file(str(stages / "features-train.safetensors"))
    assert torch.equal(feats["counts"].float().sum(1),
                       torch.full((len(feats["counts"]),), 143.0))
    with open(out / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(f)
                  if r.get("train/loss_epoch")]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert result["test"]["num_clips"] > 0 and result["epochs"] == 6


def test_head_trains_with_dropout_and_masking(data, tmp_path):
    from earmark.train.stages import prepare_run

    cfg = config(f"synth:{data}", tmp_path / "modes", model_args=dict(TINY, mask_prob=0.5))
    setup = prepare_run(cfg)
    model = setup.model
    # the mode fitting starts in: head in training (dropout, masking), autoencoders not
    assert model.head.training and not model.autoencoders.training
    counts, _, _ = next(iter(setup.train_loader))
    assert (model.mask_counts(counts) == 0).float().mean() > (counts == 0).float().mean()


def test_model_directory_holds_the_whole_chain(run, data):
    out, _ = run
    tagger = earmark.load(out / "model")
    model = tagger.model
    stage_state = load_file(str(out / "stages" / "codebook.safetensors"))
    for name in FAMILIES:  # the fitted code books travel with the model
        assert torch.equal(model.centroids(name), stage_state[f"centroids_{name}"])
    assert model.norm[1] > 0 and model.norm[1] != 1.0  # the log-mel statistics too
    item = from_spec(f"synth:{data}").split("test").items[0]
    tags = tagger.tag(item.path, top_k=3)
    assert len(tags) == 3 and tags[0][0] in tagger.labels
    scores = tagger.scores(item.path)
    torch.testing.assert_close(scores.sum(), torch.tensor(1.0))  # single-label: softmax
    # the head's checkpoint loads as well
    ckpt = earmark.load(out / "checkpoints" / "last.ckpt")
    assert ckpt.labels == tagger.labels


def test_resume_reuses_finished_stages(run, data, tmp_path):
    out, _ = run
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.safetensors")}
    train(config(f"synth:{data}", out, epochs=7), resume=True)
    assert {p.name: p.stat().st_mtime_ns
            for p in (out / "stages").glob("*.safetensors")} == stamp
    with open(out / "logs" / "metrics.csv") as f:
        epochs = {r["epoch"] for r in csv.DictReader(f) if r.get("train/loss_epoch")}
    assert len(epochs) == 7  # the head went on from its last checkpoint
    # another code-book size keeps the autoencoders and fits new code books
    other = tmp_path / "other"
    train(config(f"synth:{data}", other, epochs=1, model_args=dict(TINY, codebook_size=4),
                 stages_from=str(out)))
    assert load_file(str(other / "stages" / "codebook.safetensors"))[
        "centroids_patch"].shape[0] == 4
    assert (other / "stages" / "autoencoder.safetensors").read_bytes() == (
        out / "stages" / "autoencoder.safetensors").read_bytes()


def test_a_run_stopped_before_its_heads_first_checkpoint_resumes_from_its_stages(
        run, data, tmp_path):
    out, _ = run
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "checkpoints")  # stopped while the head trained its first epoch
    shutil.rmtree(cut / "model")
    stamp = {p.name: p.stat().st_mtime_ns for p in (cut / "stages").glob("*.safetensors")}
    train(config(f"synth:{data}", cut, epochs=1), resume=True)
    assert (cut / "model").is_dir() and (cut / "checkpoints" / "last.ckpt").is_file()
    assert {p.name: p.stat().st_mtime_ns
            for p in (cut / "stages").glob("*.safetensors")} == stamp
    # without the stages there is nothing to resume
    shutil.rmtree(cut / "checkpoints")
    shutil.rmtree(cut / "stages")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config(f"synth:{data}", cut, epochs=1), resume=True)


def test_a_fresh_run_ignores_checkpoints_left_in_its_directory(run, data, tmp_path):
    from earmark.train.rundir import RunDirError

    out, _ = run
    again = tmp_path / "again"
    (again / "checkpoints").mkdir(parents=True)
    stale = again / "checkpoints" / "epoch=099-score=1.0000.ckpt"  # would win the average
    stale.write_bytes(b"not a checkpoint")
    with pytest.raises(RunDirError, match="holds a run"):  # not silently
        train(config(f"synth:{data}", again, epochs=1, stages_from=str(out)))
    train(config(f"synth:{data}", again, epochs=1, stages_from=str(out)), overwrite=True)
    assert not stale.exists()
    assert [p.name for p in (again / "checkpoints").glob("epoch=*")][0].startswith("epoch=000")


def test_feature_views_add_shifted_copies_of_training_clips(data, tmp_path):
    import numpy as np

    from earmark.models.codebook import item_chunks

    model = earmark.create_model("codebook", 8, **TINY)
    item = from_spec(f"synth:{data}").split("train").items[0]
    one = item_chunks(model, item)
    three = item_chunks(model, item, views=3, gain_db=6.0, rng=np.random.default_rng(0))
    assert one.shape == (1, 96, 100) and three.shape == (3, 96, 100)
    assert torch.equal(three[0], one[0])  # the clip as it is comes first
    assert not torch.allclose(three[1], one[0]) and not torch.allclose(three[2], three[1])


def test_feature_views_go_through_the_acoustic_augmentations(data):
    import numpy as np

    from earmark.audio.augment import AcousticAugment
    from earmark.models.codebook import item_chunks

    model = earmark.create_model("codebook", 8, **TINY)
    item = from_spec(f"synth:{data}").split("train").items[0]
    plain = item_chunks(model, item, views=2, rng=np.random.default_rng(0))
    noisy = item_chunks(model, item, views=2, rng=np.random.default_rng(0),
                        augment=AcousticAugment(model.sample_rate, noise=1.0,
                                                noise_snr=(0.0, 0.0)))
    assert torch.equal(noisy[0], plain[0])  # the clip itself is never augmented
    assert not torch.allclose(noisy[1], plain[1])  # its copies are


def test_multi_label_head_uses_sigmoid_and_huber(data, tmp_path):
    model = earmark.create_model("codebook", 3, multi_label=True, **TINY)
    module = HeadModule(model, config("x", tmp_path), ["a", "b", "c"], 1)
    logits, target = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
    torch.testing.assert_close(module.loss(logits, target),
                               F.huber_loss(logits.sigmoid(), target))
    # soundscapes: multi-label clips of 3 s, three 1 s chunks each with the clip's labels
    result = train(config(f"synth:{data}/soundscapes.csv", tmp_path / "ml", epochs=2,
                          model_args=dict(TINY, codebook_size=4)))
    assert result["test"]["task"] == "multi-label"
    feats = load_file(str(tmp_path / "ml" / "stages" / "features-train.safetensors"))
    clips, per_clip = torch.unique(feats["clip"], return_counts=True)
    assert (per_clip == 3).all()


def test_code_statistics_and_pictures(run, data, tmp_path):
    out, _ = run
    model = earmark.load(out / "model").model
    manifest = from_spec(f"synth:{data}").split("train")
    stats = code_statistics(model, manifest, top=3)
    assert set(stats["classes"]) == set(manifest.labels)
    for per in stats["classes"].values():
        for name in FAMILIES:
            shares = [e["share"] for e in per[name]]
            assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    counts = torch.tensor(stats["counts"]["envelope"])
    assert counts.sum() == 10 * stats["chunks"]  # ten spectral envelopes per chunk
    for name, shape in (("patch", (8, 10)), ("band", (8, 100)), ("envelope", (96, 10))):
        assert render_code(model, name, 3).shape == shape
    png = plot_code(model, "thumbnail", 2, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="outside the code book"):
        render_code(model, "patch", 99)
    with pytest.raises(ModelError, match="not a codebook model"):
        code_statistics(earmark.create_model("vit-tiny", 3), manifest)


def test_cli_codebook_writes_table_json_and_sheets(run, data, tmp_path, capsys):
    out, _ = run
    rc = main(["codebook", str(out), "--data", f"synth:{data}", "--split", "test",
               "--out", str(tmp_path / "insp"), "--render", "patch:1", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "thumbnail" in text and "chunks" in text
    for name in ["codes.json", "patch-1.png"] + [f"codes-{n}.png" for n in FAMILIES]:
        assert (tmp_path / "insp" / name).is_file(), name
    assert main(["codebook", str(out), "--render", "nope:1"]) == 2


def test_profile_stream_and_export(run, tmp_path):
    from earmark.export import export_onnx
    from earmark.infer.tagger import load_onnx
    from earmark.profile import profile_model

    out, _ = run
    tagger = earmark.load(out / "model")
    prof = profile_model(tagger.model, seconds=1.0, repeats=2)
    assert prof["gflops_per_clip"] > 0 and prof["params"] > 0
    wave = torch.randn(16000 * 3) * 0.1
    session = tagger.stream(chunk_seconds=1.0)
    results = session.push(wave) + session.flush()
    assert len(results) == 3
    path = export_onnx(out / "model", tmp_path / "cb.onnx")
    onnx_tagger = load_onnx(path)
    torch.testing.assert_close(onnx_tagger.scores(wave[:16000]), tagger.scores(wave[:16000]),
                               atol=1e-4, rtol=1e-3)


def test_cli_train_passes_the_stage_options(data, tmp_path):
    out = tmp_path / "cli"
    rc = main(["train", "--data", f"synth:{data}", "--model", "codebook", "--out", str(out),
               "--model-arg", "codebook_size=4", "--model-arg", "ae_hidden=16",
               "--model-arg", "hidden=16", "--ae-steps", "7", "--ae-batch", "32",
               "--kmeans-epochs", "1", "--feature-views", "2", "--epochs", "1",
               "--no-progress"])
    assert rc == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert (saved["ae_steps"], saved["ae_batch"], saved["feature_views"]) == (7, 32, 2)
    ae = json.loads((out / "stages" / "autoencoder.safetensors.json").read_text())
    assert ae["settings"]["ae_steps"] == 7
    train_feats = load_file(str(out / "stages" / "features-train.safetensors"))
    train_m = split_manifest(from_spec(f"synth:{data}"), None)[0]
    assert len(train_feats["counts"]) == 2 * len(train_m)  # 1 s clips: one chunk per view
    assert (out / "model" / "config.json").is_file()
