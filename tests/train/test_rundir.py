"""One training per run directory: the lock, refusing a directory that holds a run,
--overwrite, and what --resume ignores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from earmark.train.config import TrainConfig
from earmark.train.rundir import (
    LOCK,
    RunDirError,
    prepare_run_dir,
    resume_differences,
    run_lock,
)


def test_a_second_run_into_a_locked_directory_stops_with_the_owner(tmp_path):
    with run_lock(tmp_path):
        owner = json.loads((tmp_path / LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunDirError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            with run_lock(tmp_path):
                pass
    assert not (tmp_path / LOCK).exists()  # released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                             "started": "earlier"}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over the lock of a training that is gone (pid {dead.pid}" in err
    # a lock from another host cannot be checked: refused
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunDirError, match="elsewhere"):
        with run_lock(tmp_path):
            pass


def test_a_directory_that_holds_a_run_needs_resume_or_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    prepare_run_dir(run)  # nothing there yet: fine
    for name in ("checkpoints", "model"):
        (run / name).mkdir(parents=True)
        (run / name / "x").write_text("old")
    (run / "metrics.json").write_text("{}")
    (run / "notes.txt").write_text("the user's own file")
    with pytest.raises(RunDirError, match="holds a run .*--resume.*--overwrite"):
        prepare_run_dir(run)
    prepare_run_dir(run, resume=True)  # continuing it is fine
    with pytest.raises(RunDirError, match="give one"):
        prepare_run_dir(run, resume=True, overwrite=True)
    prepare_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the run's parts go
    assert "cleared the previous run" in capsys.readouterr().err


def test_resume_names_the_settings_it_ignores():
    saved = TrainConfig(data="fsdd:a", out="r", model="vit-tiny", lr=0.01, epochs=5)
    given = TrainConfig(data="fsdd:b", out="r2", model="vit-tiny", lr=0.02, epochs=9)
    # only what the user typed counts; epochs and out are taken from the command line
    assert resume_differences(saved, given, {"data", "out", "epochs"}) == [
        "--data 'fsdd:b' (the run has 'fsdd:a')"]
    assert resume_differences(saved, given, {"lr", "model"}) == [
        "--lr 0.02 (the run has 0.01)"]  # the same model is no difference


def test_resume_names_a_typed_model_arg_by_its_option():
    from earmark.cli.training import typed_fields

    argv = ["train", "--data", "x", "--out", "r", "--model-arg", "depth=2", "--no-progress",
            "--resume"]
    assert typed_fields(argv) == {"data", "out", "model_args", "progress"}
    saved = TrainConfig(data="x", out="r", model="vit-tiny", model_args={"depth": 1})
    given = TrainConfig(data="x", out="r", model="vit-tiny", model_args={"depth": 2})
    assert resume_differences(saved, given, typed_fields(argv)) == [
        "--model-arg {'depth': 2} (the run has {'depth': 1})"]


def test_train_twice_into_one_directory_needs_overwrite_and_resume_says_what_it_ignores(
        tmp_path, capsys):
    from earmark.cli import main

    data = tmp_path / "data"
    assert main(["synth", str(data), "--clips-per-class", "2", "--clip-seconds", "0.5",
                 "--soundscapes", "0"]) == 0
    run = tmp_path / "run"
    base = ["train", "--data", f"synth:{data}", "--out", str(run), "--model", "vit-tiny",
            "--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg",
            "num_heads=2", "--epochs", "1", "--batch-size", "8", "--no-progress"]
    assert main(base) == 0
    first = (run / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(base) == 2  # a second run would destroy the first: refused
    err = capsys.readouterr().err
    assert "holds a run" in err and "--overwrite" in err and "--resume" in err
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == first  # untouched
    assert not (run / LOCK).exists()  # the refused run left no lock behind
    assert main([*base, "--overwrite"]) == 0
    assert "cleared the previous run" in capsys.readouterr().err
    # --resume keeps the saved settings and names what it ignores
    assert main(["train", "--data", f"synth:{data}", "--out", str(run), "--epochs", "2",
                 "--lr", "0.5", "--resume", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "ignoring --lr 0.5" in err
    assert json.loads((run / "train_config.json").read_text())["lr"] != 0.5


def _train_options() -> dict:
    """The option strings ``earmark train`` accepts -> their actions."""
    from earmark.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    return commands["train"]._option_string_actions


def test_resume_names_every_ignored_setting_by_an_option_train_accepts():
    from dataclasses import fields

    from earmark.train.rundir import RESUME_TAKES

    options = _train_options()
    saved = TrainConfig(data="x", out="r")
    for f in fields(TrainConfig):
        if f.name in RESUME_TAKES:
            continue
        given = TrainConfig(data="x", out="r")
        setattr(given, f.name, "another value")
        [message] = resume_differences(saved, given, {f.name})
        flag = message.split()[0]
        assert flag in options, f"{f.name}: {message}"
        # the option sets this very field (--model-arg collects into model_args)
        assert options[flag].dest in (f.name, "model_arg", "fold"), f"{f.name}: {message}"


def test_resume_names_the_room_impulse_responses_by_their_option():
    saved = TrainConfig(data="x", out="r", rir_dir="rooms")
    given = TrainConfig(data="x", out="r", rir_dir="halls")
    assert resume_differences(saved, given, {"rir_dir"}) == [
        "--rir 'halls' (the run has 'rooms')"]
    assert _train_options()["--rir"].dest == "rir_dir"


def test_every_option_the_training_code_names_exists():
    """Messages and docs in earmark.train name options a user can type: each ``--option``
    in their strings is one that some earmark subcommand accepts."""
    import ast
    import re
    from pathlib import Path

    import earmark.train
    from earmark.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    accepted = {flag for p in commands.values() for flag in p._option_string_actions}
    named = {}
    for path in Path(earmark.train.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in re.findall(r"(?<![\w-])--[a-z](?:[a-z0-9-]*[a-z0-9])?(?![\w-])",
                                          node.value):
                    named.setdefault(flag, path.name)
    # the walk reads the parts of f-strings and docstrings
    assert {"--clip-seconds", "--stages-from", "--rir"} <= set(named)
    assert not {flag: where for flag, where in named.items() if flag not in accepted}
