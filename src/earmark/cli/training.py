"""Commands that train: ``train``, ``cv`` and ``demo``."""

from __future__ import annotations

import argparse

from earmark.cli.options import (
    add_model_args,
    add_progress,
    command,
    error,
    model_args,
    pair,
    progress,
    show_pair,
    typed_flags,
)


def add_commands(sub) -> None:
    p = command(sub, "demo", "synthesise data, train, evaluate, tag, detect and stream, "
                                    "in two to three minutes on 2 cores")
    p.add_argument("--out", default="earmark-demo", help="folder for everything the demo makes")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the demo's own, sized for a CPU)")
    p.set_defaults(fn=cmd_demo)


def add_training_commands(sub) -> None:
    p = command(sub, "train", "train a model; writes a run directory")
    add_train_options(p)
    p.add_argument("--fold", type=int, default=None, help="hold out this fold (ESC-50 style)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from OUT/checkpoints/last.ckpt, with its saved "
                        "settings")
    p.add_argument("--overwrite", action="store_true",
                   help="OUT holds a run: clear it (checkpoints, logs, metrics, model) and start "
                        "afresh")
    p.set_defaults(fn=cmd_train)

    p = command(sub, "cv", "k-fold cross validation: one run per fold, or per held-out "
                                  "group with --group-by group")
    add_train_options(p)
    p.add_argument("--group-by", default=None, metavar="KEY",
                   help="hold out whole groups instead of the data set's folds; KEY is 'group' "
                        "(the speaker of fsdd and speechcommands, the source recording of "
                        "esc50, a manifest's group column): one run per group")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="with --group-by: K folds of whole groups (balanced by items, seeded "
                        "with --seed) instead of one run per group")
    p.add_argument("--overwrite", action="store_true",
                   help="runs already in OUT are cleared and trained again")
    p.set_defaults(fn=cmd_cv)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of ``train`` and ``cv``: one per :class:`TrainConfig` field, from the field's
    type, default and metadata (help, group, spelling), so a new setting is written once."""
    from dataclasses import MISSING, fields

    from earmark.train.config import GROUPS, TrainConfig, option_flag

    groups = {name: p.add_argument_group(title) if title else p for name, title in GROUPS.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        kw: dict = {"dest": f.name, "help": meta["help"]}
        if meta["required"]:
            kw["required"] = True
        else:
            kw["default"] = None if default is MISSING else default
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind == "list":  # a LOW,HIGH range
            kw["type"] = pair
            kw["help"] += f" (default {show_pair(default)})"
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[kind]
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        groups[meta["group"]].add_argument(option_flag(f.name), **kw)
    add_model_args(p)
    p.add_argument("--recipe", default=None,
                   help="named training settings: robust (augmentation for new speakers, rooms and "
                        "microphones), voices (robust, with a tenth of each batch from "
                        "--synthetic voices), htsat-audioset, htsat-esc50, htsat-scv2 (the HTS-AT "
                        "paper's); options given explicitly win")
    add_progress(p)


def typed_fields(argv: list[str]) -> set[str]:
    """The :class:`TrainConfig` fields whose options the user typed, also where they repeat a
    default: ``--model-arg`` sets ``model_args``, ``--progress`` and ``--no-progress`` set
    ``progress``.

        >>> sorted(typed_fields(["train", "--data", "x", "--out", "r", "--epochs=5",
        ...                      "--no-cache", "--model-arg", "depth=1"]))
        ['cache', 'data', 'epochs', 'model_args', 'out']
    """
    from earmark.train.config import option_flags

    known = {**option_flags(), "--model-arg": "model_args", "--progress": "progress",
             "--no-progress": "progress"}
    return {known[flag] for flag in typed_flags(argv) if flag in known}


def train_config(a: argparse.Namespace, fold=None):
    """The :class:`TrainConfig` the options give, with ``--recipe`` applied under them."""
    from dataclasses import fields

    from earmark.train.config import TrainConfig
    from earmark.train.recipes import apply_recipe

    try:
        options = {f.name for f in fields(TrainConfig) if f.metadata.get("cli")}
        config = TrainConfig(**{name: getattr(a, name) for name in options},
                             model_args=model_args(a.model_arg), fold=fold,
                             progress=progress(a))
        if a.recipe:
            # options the user typed win over the recipe, also where they repeat a default
            config = apply_recipe(a.recipe, config, typed_fields(a.argv))
    except ValueError as err:  # options that do not go together: a usage error, as argparse's
        raise SystemExit(error(str(err))) from None
    return config


def cmd_train(a) -> int:
    from earmark.train.run import train

    result = train(train_config(a, a.fold), resume=a.resume, overwrite=a.overwrite,
                   typed=typed_fields(a.argv) if a.resume else None)
    if "rank" in result:  # one of several launched processes: rank 0 reports
        return 0
    if "init" in result:
        print(f"init: {result['init']}")
    print(f"{result['stage']}: trained {result['epochs']} epochs in "
          f"{result['train_seconds']:.0f} s; averaged "
          f"{', '.join(result['averaged']) or 'last weights'}")
    for key, value in result.get("test", {}).items():
        if isinstance(value, float):
            print(f"  test {key:<16} {value:.4f}")
    print(f"run directory: {a.out}  (model: {a.out}/model)")
    return 0


def cmd_cv(a) -> int:
    from earmark.train.run import check_cv_options, cross_validate

    try:  # before any run starts
        check_cv_options(a.group_by, a.folds)
    except ValueError as err:
        return error(str(err))
    summary = cross_validate(train_config(a), group_by=a.group_by, folds=a.folds,
                             overwrite=a.overwrite)
    print_cv_table(summary)
    print(f"mean +- standard deviation over {len(summary['folds'])} runs:")
    for key, v in summary.items():
        if isinstance(v, dict) and "mean" in v:
            print(f"{key:<20} {v['mean']:.4f} +- {v['std']:.4f}")
    print(f"per-{'group' if a.group_by and a.folds is None else 'fold'} runs and "
          f"cv_metrics.json in {a.out}")
    return 0


def print_cv_table(summary: dict) -> None:
    """One line per run: what it held out, how many items, and its headline metric."""
    metric = "accuracy" if "accuracy" in summary else "mAP"
    runs = summary["folds"]
    # leave-one-group-out runs are named after their group; folds of groups list theirs
    list_groups = "group_by" in summary and any(r["groups"] != [k] for k, r in runs.items())
    first = "group" if "group_by" in summary and not list_groups else "fold"
    width = max(len(first), *(len(str(k)) for k in runs))
    print(f"{first:<{width}}  {'items':>6}  {metric:>8}" + ("  groups" if list_groups else ""))
    for name, r in runs.items():
        value = r.get(metric)
        line = (f"{name!s:<{width}}  {r.get('items', r.get('num_clips', '-')):>6}  "
                f"{'-' if value is None else format(value, '.4f'):>8}")
        if list_groups:
            groups = ", ".join(r["groups"])
            line += f"  {groups if len(groups) <= 60 else groups[:57] + '...'}"
        print(line)


def cmd_demo(a) -> int:
    from earmark.demo import run_demo

    run_demo(a.out, seed=a.seed, epochs=a.epochs)
    return 0
