"""``earmark SUBCOMMAND``: a thin layer that parses arguments, calls the library and prints.

One module per group of commands: :mod:`~earmark.cli.data` (synth, shard, psl-scores),
:mod:`~earmark.cli.training` (demo, train, cv), :mod:`~earmark.cli.evaluation` (eval,
codebook, sed-eval), :mod:`~earmark.cli.use` (tag, detect, stream, serve) and
:mod:`~earmark.cli.model_files` (export, convert, profile, and pull and models for released
checkpoints); the options they share are declared once in :mod:`~earmark.cli.options`.
"""

from __future__ import annotations

import argparse
import sys

from earmark.cli import data, evaluation, model_files, training, use


def build_parser() -> argparse.ArgumentParser:
    from earmark._version import __version__

    parser = argparse.ArgumentParser(prog="earmark", description="Efficient audio tagging.")
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    # the order of `earmark --help`: a first look, data, training, measuring, using, files
    training.add_commands(sub)
    data.add_commands(sub)
    training.add_training_commands(sub)
    evaluation.add_commands(sub)
    use.add_commands(sub)
    model_files.add_commands(sub)
    evaluation.add_detection_scoring(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from earmark.cli.options import offline_setting
    from earmark.errors import EarmarkError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    threads = getattr(args, "model_threads", None)
    if threads is not None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        with offline_setting(args):
            return args.fn(args)
    except (EarmarkError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if threads is not None:
            torch.set_num_threads(previous)
