"""One training per run directory: a lock, and no silent reuse of a directory that holds a run.

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> with run_lock(run):  # train(...) here; a second run_lock(run) raises RunDirError
    ...     (run / LOCK).is_file()
    True
    >>> (run / LOCK).exists()  # released when the block ends
    False

The lock is a file ``.earmark-lock`` in the run directory, created exclusively, holding the
owner's pid, host and start time. A lock left by a process that died (same host, pid gone) is
taken over with a message; a live owner, or one on another host (whose pid cannot be
checked here), stops the second run with an error that names it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from earmark.errors import EarmarkError
from earmark.files import process_alive
from earmark.train.config import option_flag

LOCK = ".earmark-lock"
# what a run writes into its directory: the parts --overwrite clears (nothing else is touched)
RUN_ENTRIES = ("checkpoints", "logs", "model", "stages", "train_config.json", "config.json",
               "metrics.json", "test_metrics.json", "init.json", "cv_metrics.json")
# settings a resumed run takes from the command line, not from the saved run
RESUME_TAKES = ("epochs", "progress", "out")


class RunDirError(EarmarkError):
    """A run directory that cannot be used as asked (locked, or holding another run)."""


def first_process() -> bool:
    """Whether this is the first (or only) process of a run: the others that torchrun,
    Lightning's launcher or SLURM start share its directory, its lock and its checks."""
    return all(os.environ.get(v, "0") in ("", "0")
               for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextmanager
def run_lock(out: str | Path):
    """Hold ``out/.earmark-lock`` while the block runs (in the first process of a run)."""
    out = Path(out)
    if not first_process():
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner(path)
            if owner is not None and (owner.get("host") != me["host"]
                                      or process_alive(int(owner.get("pid", -1)))):
                raise RunDirError(
                    f"{out}: another training is using this run directory (pid "
                    f"{owner.get('pid')} on {owner.get('host')}, since {owner.get('started')}); "
                    f"wait for it, use another --out, or delete {path} if that process is "
                    "gone") from None
            print(f"{out}: taking over the lock of a training that is gone (pid "
                  f"{(owner or {}).get('pid', '?')} on {(owner or {}).get('host', '?')})",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:  # pragma: no cover - another process took it between unlink and create
        raise RunDirError(f"{out}: could not take the run directory's lock {path}")
    try:
        yield
    finally:
        if (_read_owner(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):  # half-written by a process killed while writing it
        return None


def holds_run(out: str | Path) -> list[str]:
    """The parts of a run found in ``out`` (empty: nothing of a run there)."""
    out = Path(out)
    return [name for name in RUN_ENTRIES if (out / name).exists()]


def prepare_run_dir(out: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse a directory that holds a run unless it is resumed or to be overwritten;
    ``overwrite`` clears what the old run wrote (checkpoints, logs, metrics, model)."""
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite replaces it: give one")
    found = holds_run(out)
    if not found or resume:
        return
    if not overwrite:
        raise RunDirError(f"{out} holds a run ({', '.join(found)}); continue it with --resume, "
                          "replace it with --overwrite, or choose another --out")
    for name in found:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"{out}: cleared the previous run ({', '.join(found)})", file=sys.stderr)


def resume_differences(saved, given, typed: set[str]) -> list[str]:
    """Settings the user typed (``typed``: TrainConfig field names) whose values in ``given``
    differ from the saved run's: a resumed run keeps the saved ones and says so, naming each
    by the option that sets it (:func:`~earmark.train.config.option_flag`).

        >>> from earmark.train.config import TrainConfig
        >>> saved = TrainConfig(data="fsdd:a", out="r", rir_dir="rooms")
        >>> given = TrainConfig(data="fsdd:a", out="r", rir_dir="halls", lr=0.1)
        >>> resume_differences(saved, given, {"rir_dir", "lr"})
        ['--lr 0.1 (the run has 0.0005)', "--rir 'halls' (the run has 'rooms')"]
    """
    out = []
    for f in fields(given):
        if f.name in RESUME_TAKES or f.name not in typed:
            continue
        new, old = getattr(given, f.name), getattr(saved, f.name)
        if new != old:
            out.append(f"{option_flag(f.name)} {new!r} (the run has {old!r})")
    return out
