"""Configs are checked before use: a model directory's config.json, a training checkpoint's
model config and a run's train_config.json read on --resume. A wrong field is reported with
the file, the field and what was expected, in one line; the CLI exits 2 without a traceback."""

import json

import pytest
import torch

import earmark
from earmark.cli import main
from earmark.errors import ConfigError, ModelError
from earmark.files import check_fields, dataclass_schema
from earmark.models.directory import load_checkpoint, load_model, load_model_dir, save_model_dir
from earmark.train.config import TrainConfig

LABELS = ["a", "b", "c", "d"]


def tiny():
    return earmark.create_model("vit-tiny", 4, depth=1, embed_dim=32, num_heads=2)


@pytest.fixture
def model_dir(tmp_path):
    return save_model_dir(tiny(), tmp_path / "model", LABELS)


def edit_config(model_dir, change):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return config


def _set(key, value):
    def change(config):
        *parents, last = key.split(".")
        for part in parents:
            config = config[part]
        config[last] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set("colour", "blue"), r"config\.json: unknown field colour"),
    (lambda c: c.pop("labels"), r"config\.json: labels: missing; expected a list of strings"),
    (lambda c: c.pop("sample_rate"), r"config\.json: sample_rate: missing; expected an integer"),
    (_set("num_classes", "4"), r"config\.json: num_classes: expected an integer, got \"4\""),
    (_set("multi_label", 1), r"config\.json: multi_label: expected true or false, got 1"),
    (_set("labels", ["a", "b", 3, "d"]), r"config\.json: labels: expected a list of strings"),
    (_set("labels", LABELS + ["e"]),
     r"config\.json: labels: expected one label per output \(4, num_classes\), got 5"),
    (_set("format_version", 2), r"config\.json: format_version: 2 is newer than this earmark"),
    (_set("name", "vit-huge"), r"config\.json: name: unknown model 'vit-huge'"),
    (_set("args.depthh", 2), r"config\.json: args: does not build vit-tiny: .*depthh"),
    (_set("sample_rate", 32000),
     r"config\.json: sample_rate: 32000 contradicts the model its args build \(16000\)"),
    (_set("frontend.n_mels", 128),
     r"config\.json: frontend\.n_mels: 128 contradicts the model its args build \(64\)"),
    (_set("frontend.colour", "blue"), r"config\.json: frontend\.colour: unknown front end"),
])
def test_a_wrong_field_of_config_json_is_named(model_dir, change, message):
    edit_config(model_dir, change)
    with pytest.raises(ModelError, match=message) as info:
        load_model_dir(model_dir)
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(model_dir / "config.json"))
    with pytest.raises(ModelError, match=message):  # the same through earmark.load
        earmark.load(model_dir)


def test_a_front_end_that_contradicts_the_weights_is_named_in_one_line(model_dir):
    # args and frontend agree with each other but not with the weights (64 mel bins there):
    # the patch grid, hence the position embedding, differs
    def more_mels(config):
        config["args"]["frontend"]["n_mels"] = 128
        config["frontend"]["n_mels"] = 128
    edit_config(model_dir, more_mels)
    with pytest.raises(ModelError, match=r"model\.safetensors: weights do not fit model vit-tiny"
                                         r" as its config describes it: .*pos_embed") as info:
        load_model_dir(model_dir)
    assert "\n" not in str(info.value)


def test_model_directories_of_older_earmark_versions_still_load(model_dir):
    # front end settings added later (resize, normalize) are absent from older files, and
    # Tagger.save_detection adds a detection entry
    def older(config):
        del config["frontend"]["normalize"], config["frontend"]["resize"]
        config["detection"] = {"threshold": 0.5}
    edit_config(model_dir, older)
    model, config = load_model_dir(model_dir)
    assert config["labels"] == LABELS and model.num_classes == 4


def test_a_checkpoints_model_config_is_checked(tmp_path, model_dir):
    model = tiny()
    config = json.loads((model_dir / "config.json").read_text())
    config["labels"] = ["a", "b"]
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "earmark_model": config, "epoch": 0}, tmp_path / "run.ckpt")
    with pytest.raises(ModelError, match=r"run\.ckpt: earmark_model\.labels: expected one label "
                                         r"per output \(4, num_classes\), got 2"):
        load_model(tmp_path / "run.ckpt")


@pytest.mark.parametrize("keep", [0.5, -10, 0])
def test_a_truncated_checkpoint_is_named_in_one_line(tmp_path, keep):
    torch.save({"state_dict": tiny().state_dict(), "epoch": 3}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    with pytest.raises(ModelError) as info:
        load_checkpoint(cut)
    message = str(info.value)
    assert message.startswith(f"{cut}: ") and "\n" not in message
    expected = "empty file" if keep == 0 else "truncated or damaged checkpoint"
    assert expected in message and "miniz" not in message and "Errno" not in message


def test_cli_exits_2_with_one_line_for_a_bad_config(model_dir, write_wav, capsys):
    edit_config(model_dir, _set("labels", ["a", "b"]))
    assert main(["tag", str(model_dir), str(write_wav())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {model_dir / 'config.json'}: labels: expected one label")


# ---- a training run's saved config, read on --resume ------------------------------------------


def saved_run(tmp_path, change=None, last: bytes | None = None):
    """A run directory that holds a train_config.json (edited by ``change``) and a last
    checkpoint: enough for --resume to read before it touches any data."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = TrainConfig(data=f"synth:{tmp_path / 'nowhere'}", out=str(run)).to_dict()
    if change:
        change(config)
    (run / "train_config.json").write_text(json.dumps(config))
    if last is None:
        torch.save({"epoch": 0, "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    else:
        (run / "checkpoints" / "last.ckpt").write_bytes(last)
    return run


def resume(run, capsys):
    code = main(["train", "--data", "synth:x", "--out", str(run), "--resume", "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (_set("epochs", "ten"), r"train_config\.json: epochs: expected an integer, got \"ten\""),
    (_set("lr", None), r"train_config\.json: lr: expected a number, got null"),
    (_set("cache", "yes"), r"train_config\.json: cache: expected true or false or null"),
    (_set("speed_range", "0.9,1.1"), r"train_config\.json: speed_range: expected a list"),
    (_set("learning_rate", 0.1), r"train_config\.json: unknown field learning_rate"),
    (_set("mask_ratio", 1.5), r"train_config\.json: mask_ratio must be between 0 and 1"),
    (lambda c: c.pop("data"), r"train_config\.json: data: missing; expected a string"),
])
def test_resume_checks_the_saved_run_config(tmp_path, capsys, change, message):
    run = saved_run(tmp_path, change)
    code, err = resume(run, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {run / 'train_config.json'}: ")
    assert __import__("re").search(message, err), err


def test_resume_accepts_a_saved_config_that_predates_newer_options(tmp_path):
    from earmark.train.run import read_train_config

    run = saved_run(tmp_path, lambda c: [c.pop(k) for k in ("vtlp", "num_nodes", "feature_views")])
    config = read_train_config(run / "train_config.json")
    assert config.vtlp == 0.0 and config.num_nodes == 1 and config.data.startswith("synth:")


def test_resume_names_a_truncated_last_checkpoint(tmp_path, capsys):
    torch.save({"epoch": 0, "state_dict": tiny().state_dict()}, tmp_path / "whole.ckpt")
    run = saved_run(tmp_path, last=(tmp_path / "whole.ckpt").read_bytes()[:-100])
    code, err = resume(run, capsys)
    lines = err.splitlines()  # (a line before it may name the typed settings resume ignores)
    assert code == 2 and "Traceback" not in err and [ln for ln in lines if "error" in ln] == [
        lines[-1]], err
    assert lines[-1].startswith(f"error: {run / 'checkpoints' / 'last.ckpt'}: truncated or damaged")


def test_one_checker_for_both_files_and_the_recipes_pass_it():
    from earmark.train.recipes import RECIPES, apply_recipe

    schema, optional = dataclass_schema(TrainConfig)
    assert optional == set(schema) - {"data"}
    for name in RECIPES:
        config = apply_recipe(name, TrainConfig(data="synth:x", synthetic="synth:y"),
                              set())
        check_fields("train_config.json", json.loads(json.dumps(config.to_dict())), schema,
                     optional)
    with pytest.raises(ConfigError, match=r"^x\.json: args\.depth: expected an integer"):
        check_fields("x.json", {"depth": 1.5}, {"depth": int}, prefix="args.")
