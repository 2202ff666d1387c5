"""Options that several commands share, each declared once, and the helpers every command
uses to report what it did."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator

MODEL_HELP = ("model directory, run directory, .ckpt, .onnx, or a released model's name "
              "(earmark models --pretrained; downloaded once, then cached)")


def add_model(p: argparse.ArgumentParser, what: str = "") -> None:
    """The ``model`` argument of every command that uses a trained model: one spelling and one
    help text (``what`` adds a word on the kind of model a command needs), and ``--offline``
    for a released model's name."""
    p.add_argument("model", help=MODEL_HELP + (f" ({what})" if what else ""))
    add_offline(p)


def add_offline(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true",
                   help="never touch the network: a released model must be in the cache "
                        "already (as EARMARK_OFFLINE=1)")


@contextlib.contextmanager
def offline_setting(a: argparse.Namespace) -> Iterator[None]:
    """``--offline`` as ``EARMARK_OFFLINE=1`` while a command runs: every load of a released
    model below it reads the variable."""
    if not getattr(a, "offline", False):
        yield
        return
    previous = os.environ.get("EARMARK_OFFLINE")
    os.environ["EARMARK_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("EARMARK_OFFLINE", None)
        else:
            os.environ["EARMARK_OFFLINE"] = previous


def add_progress(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true",
                   help="show progress bars even when stderr is not a terminal")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: shown only on a terminal)")


def progress(a: argparse.Namespace) -> bool:
    """Progress bars on a terminal, or where asked for; never in a redirected log unless
    asked."""
    if a.no_progress:
        return False
    return bool(a.progress) or sys.stderr.isatty()


def add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also unpickle Python objects in a .ckpt besides its weights; this can "
                        "run code hidden in the file, so use it only for files you trust")


def add_threads(p: argparse.ArgumentParser, default: int | None = None, why: str = "") -> None:
    p.add_argument("--threads", dest="model_threads", type=int, default=default,
                   help="torch threads for the model" + (f" ({why})" if why else
                                                           " (default: torch's, one per core)"))


def add_chunk(p: argparse.ArgumentParser, role: str, default: str) -> None:
    """``--chunk S``: in every command, the seconds of audio one score covers (``role``: what
    the command does with each chunk; ``default``: without the option)."""
    p.add_argument("--chunk", type=float, default=None,
                   help=f"seconds of audio per chunk: {role} (default: {default})")


def add_model_args(p: argparse.ArgumentParser, example: str = "patch_stride=[16,8]") -> None:
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a model argument (JSON value), e.g. {example}")


def model_args(pairs: list[str]) -> dict:
    """``["depth=4", "patch_stride=[16,8]"]`` -> ``{"depth": 4, "patch_stride": [16, 8]}``: each
    value is read as JSON, else kept as text.

        >>> model_args(["depth=4", "patch_stride=[16,8]", "name=tiny"])
        {'depth': 4, 'patch_stride': [16, 8], 'name': 'tiny'}
    """
    args = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def pair(text: str) -> list[float]:
    """``"0.9,1.1"`` -> ``[0.9, 1.1]`` (argparse type of the LOW,HIGH options).

        >>> pair("0.9,1.1")
        [0.9, 1.1]
    """
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return [float(parts[0]), float(parts[1])]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None


def show_pair(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def typed_flags(argv: list[str]) -> set[str]:
    """The option flags typed in ``argv``, as written (``--epochs=5`` gives ``--epochs``);
    abbreviations are off, so each is a flag some command declares. A value never starts
    with ``--`` unless joined with ``=``, and everything after a bare ``--`` is positional.

        >>> sorted(typed_flags(["train", "--data", "x", "--epochs=5", "--", "--not-a-flag"]))
        ['--data', '--epochs']
    """
    flags = set()
    for token in argv:
        if token == "--":
            break
        if token.startswith("--"):
            flags.add(token.partition("=")[0])
    return flags


def error(message: str) -> int:
    """A usage error: the message on stderr, and the exit code argparse gives one."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def report_skipped(failed: list[str], total: int) -> int:
    """Print which of ``total`` files a batch command skipped and why; its exit code (1 when
    any was)."""
    for f in failed:
        print(f"skipped {f}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {total} files failed", file=sys.stderr)
    return 1 if failed else 0


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` opens with ``summary`` (as ``earmark --help`` lists it),
    shows each option's default, and takes no abbreviated options (``--epoch`` must not pass
    for ``--epochs``)."""
    return sub.add_parser(name, help=summary, description=summary, allow_abbrev=False,
                          formatter_class=DefaultsFormatter)
