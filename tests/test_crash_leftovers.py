"""Leftovers of a crash are cleaned: the temporaries a killed writer leaves (a model
directory's hidden folder, an ONNX export's or a checkpoint's hidden file) go at the next
write to that folder; a write still running in a live process keeps its own. Files and
folders earmark writes get the permissions open() and mkdir() give."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import earmark
from earmark.files import LEFTOVER_AGE, atomic_path, remove_leftovers, temporary_name, write_json
from earmark.models.directory import save_model_dir

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pids are checked with signals")

# a writer stuck halfway through an ONNX export (atomic_path) in ONNX/ and, with "model",
# through save_model_dir in MODELS/ (after its weights, before its config)
STUCK_WRITER = """
import sys, time
from pathlib import Path
from earmark.files import atomic_path
onnx_dir, models_dir, what = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with atomic_path(onnx_dir / "model.onnx") as tmp:
    tmp.write_bytes(b"half an ONNX graph")
    if what == "model":
        import earmark
        import earmark.models.directory as directory
        real = directory.save_file
        def stuck(*args, **kw):
            real(*args, **kw)
            print("ready", flush=True)
            time.sleep(600)
        directory.save_file = stuck
        model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
        directory.save_model_dir(model, models_dir / "model", ["a", "b"])
    print("ready", flush=True)
    time.sleep(600)
"""


def stuck_writer(onnx_dir, models_dir, what):
    proc = subprocess.Popen([sys.executable, "-c", STUCK_WRITER, str(onnx_dir), str(models_dir),
                             what], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: its pid names no process any more


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def tiny():
    return earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)


def test_a_killed_writers_temporaries_go_and_a_live_writers_stay(tmp_path):
    onnx_dir, models_dir = tmp_path / "onnx", tmp_path / "models"
    onnx_dir.mkdir(), models_dir.mkdir()
    killed = stuck_writer(onnx_dir, models_dir, "model")
    live = stuck_writer(onnx_dir, models_dir, "files")
    try:
        killed_onnx = [n for n in hidden(onnx_dir) if f"-{killed.pid}-" in n]
        live_onnx = [n for n in hidden(onnx_dir) if f"-{live.pid}-" in n]
        assert len(killed_onnx) == 1 and len(live_onnx) == 1
        [killed_model] = hidden(models_dir)
        assert (models_dir / killed_model / "model.safetensors").is_file()
        # unrelated hidden entries, and names earmark never makes, are not touched
        for name in (".model.settings", ".notes.tmp", ".model.abcd1234", "model.tmp.onnx"):
            (onnx_dir / name).write_text("keep")
        kill(killed)
        # the next model directory written beside it removes the killed one's folder
        save_model_dir(tiny(), models_dir / "model", ["a", "b"])
        assert hidden(models_dir) == []
        assert sorted(p.name for p in (models_dir / "model").iterdir()) == [
            "config.json", "model.safetensors"]
        # the next ONNX file written there removes the killed export's half, not the live one's
        with atomic_path(onnx_dir / "model.onnx") as tmp:
            tmp.write_bytes(b"a whole ONNX graph")
        assert hidden(onnx_dir) == sorted([*live_onnx, ".model.abcd1234", ".model.settings",
                                           ".notes.tmp"])
        assert (onnx_dir / "model.tmp.onnx").is_file()
    finally:
        kill(live)
        if killed.poll() is None:
            kill(killed)


def dead_writer_names(*targets):
    """The temporary names a process that has since exited gave ``targets``."""
    code = ("import sys; from earmark.files import temporary_name; "
            "print(*(temporary_name(p) for p in sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, *map(str, targets)], check=True,
                          capture_output=True, text=True)
    return [Path(name) for name in done.stdout.split()]


def test_a_killed_runs_checkpoint_temporary_goes_at_the_next_checkpoint(tmp_path):
    from earmark.train.run import LastCheckpoint

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    [leftover] = dead_writer_names(ckpt_dir / "last.ckpt")
    leftover.write_bytes(b"half a checkpoint")
    saved = []

    class Trainer:  # what LastCheckpoint uses of a Lightning trainer
        is_global_zero = True

        class strategy:
            @staticmethod
            def barrier():
                pass

        @staticmethod
        def save_checkpoint(path, weights_only=False):
            saved.append(Path(path).name)
            Path(path).write_bytes(b"a whole checkpoint")

    LastCheckpoint(ckpt_dir / "last.ckpt").on_train_epoch_end(Trainer(), None)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]
    assert (ckpt_dir / "last.ckpt").read_bytes() == b"a whole checkpoint"
    assert saved[0].startswith(".last.") and saved[0].endswith(".tmp.ckpt")


def test_temporaries_of_other_machines_and_older_versions_go_only_when_stale(tmp_path):
    from earmark.files import _MACHINE

    other = f"{(int(_MACHINE, 16) ^ 1):08x}"
    names = {"other_fresh": f".metrics.{other}-12-{'a' * 16}.tmp.json",
             "other_stale": f".metrics.{other}-13-{'b' * 16}.tmp.json",
             "old_fresh": f".metrics.{'c' * 32}.tmp.json",  # names before they held a pid
             "old_stale": f".model.{'d' * 32}.tmp"}
    mine = temporary_name(tmp_path / "x.json")  # a write of this (live) process
    mine.write_text("{")
    stale = time.time() - LEFTOVER_AGE - 60
    for key, name in names.items():
        path = tmp_path / name
        path.mkdir() if key == "old_stale" else path.write_text("x")
        if key.endswith("stale"):
            os.utime(path, (stale, stale))
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["other_stale"], names["old_stale"]])
    assert hidden(tmp_path) == sorted([names["other_fresh"], names["old_fresh"], mine.name])


def test_files_and_folders_get_the_permissions_open_and_mkdir_give(tmp_path):
    # a process with its own umask: the model folder, its weights (safetensors makes them
    # 0600), its config and a JSON file follow it, as a plain open() and mkdir() would
    code = """
import os, sys
from pathlib import Path
os.umask(0o027)
import earmark
from earmark.files import write_json
from earmark.models.directory import save_model_dir
out = Path(sys.argv[1])
model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
save_model_dir(model, out / "m", ["a", "b"])
save_model_dir(model, out / "m", ["a", "b"])  # replaced
write_json(out / "metrics.json", {"a": 1})
"""
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
             for p in tmp_path.rglob("*")}
    assert modes == {"m": 0o750, "m/config.json": 0o640, "m/model.safetensors": 0o640,
                     "metrics.json": 0o640}
    # and in this process, with the umask it has
    write_json(tmp_path / "here" / "a.json", {})
    with open(tmp_path / "plain", "w"):
        pass
    assert (tmp_path / "here" / "a.json").stat().st_mode == (tmp_path / "plain").stat().st_mode
