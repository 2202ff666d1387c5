"""``earmark SUBCOMMAND``: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The options of ``train`` and ``cv``: one per :class:`TrainConfig` field, from the field's
    type, default and metadata (help, group, spelling), so a new setting is written once."""
    from dataclasses import MISSING, fields

    from earmark.train.config import GROUPS, TrainConfig

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
            kw["type"] = _pair
            kw["help"] += f" (default {_show(default)})"
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[kind]
        if meta["choices"]:
            kw["choices"] = meta["choices"]
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        groups[meta["group"]].add_argument(flag, **kw)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model argument (JSON value), e.g. patch_stride=[16,8]")
    p.add_argument("--recipe", default=None,
                   help="named training settings: robust (augmentation for new speakers, rooms and "
                        "microphones), htsat-audioset, htsat-esc50, htsat-scv2 (the HTS-AT "
                        "paper's); options given explicitly win")
    _add_progress(p)


def _pair(text: str) -> list[float]:
    """``"0.9,1.1"`` -> ``[0.9, 1.1]`` (argparse type of the LOW,HIGH options)."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return [float(parts[0]), float(parts[1])]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH, got {text!r}") from None


def _show(pair) -> str:
    return ",".join(f"{v:g}" for v in pair)


def _add_progress(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", action="store_true",
                   help="show progress bars even when stderr is not a terminal")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: shown only on a terminal)")


def _progress(a: argparse.Namespace) -> bool:
    """Progress bars on a terminal, or where asked for; never in a redirected log unless
    asked."""
    if a.no_progress:
        return False
    return bool(a.progress) or sys.stderr.isatty()


def _add_trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="also unpickle Python objects in a .ckpt besides its weights; this can "
                        "run code hidden in the file, so use it only for files you trust")


def _model_args(pairs: list[str]) -> dict:
    """``["depth=4", "patch_stride=[16,8]"]`` -> ``{"depth": 4, "patch_stride": [16, 8]}``."""
    args = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        try:
            args[key] = json.loads(value)
        except json.JSONDecodeError:
            args[key] = value
    return args


def _train_config(a: argparse.Namespace, fold=None):
    from dataclasses import fields

    from earmark.train.config import TrainConfig
    from earmark.train.recipes import apply_recipe

    model_args = _model_args(a.model_arg)
    try:
        options = {f.name for f in fields(TrainConfig) if f.metadata.get("cli")}
        config = TrainConfig(**{name: getattr(a, name) for name in options},
                             model_args=model_args, fold=fold, progress=_progress(a))
        if a.recipe:
            # options the user typed win over the recipe, also where they repeat a default
            config = apply_recipe(a.recipe, config, _typed_train_fields(a))
    except ValueError as err:  # options that do not go together: a usage error, as argparse's
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return config


def _typed_train_fields(a) -> set[str]:
    """The TrainConfig fields whose options the user typed (exact spellings: abbreviations
    are off): ``--model-arg`` sets ``model_args``, ``--progress`` and ``--no-progress``
    set ``progress``."""
    given = typed_options(a.argv) - {"model_arg", "no_progress"}
    given |= {"model_args"} if a.model_arg else set()
    given |= {"progress"} if a.no_progress or a.progress else set()
    return given


def cmd_train(a) -> int:
    from earmark.train.run import train

    result = train(_train_config(a, a.fold), resume=a.resume, overwrite=a.overwrite,
                   typed=_typed_train_fields(a) if a.resume else None)
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
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = cross_validate(_train_config(a), group_by=a.group_by, folds=a.folds,
                             overwrite=a.overwrite)
    _print_cv_table(summary)
    print(f"mean +- standard deviation over {len(summary['folds'])} runs:")
    for key, v in summary.items():
        if isinstance(v, dict) and "mean" in v:
            print(f"{key:<20} {v['mean']:.4f} +- {v['std']:.4f}")
    print(f"per-{'group' if a.group_by and a.folds is None else 'fold'} runs and "
          f"cv_metrics.json in {a.out}")
    return 0


def _print_cv_table(summary: dict) -> None:
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


def cmd_shard(a) -> int:
    from earmark.data.shards import write_shards
    from earmark.data.sources import from_spec

    index = write_shards(from_spec(a.data), a.out, shard_size=int(a.shard_size * 2 ** 20),
                         sample_rate=a.sample_rate, workers=a.workers,
                         progress=_progress(a), audio_format=a.audio_format)
    print(f"wrote {len(index['shards'])} shards, {index['clips']} clips, {index['hours']:.2f} h "
          f"at {index['sample_rate']} Hz to {a.out} (index: {Path(a.out) / 'index.json'})")
    for f in index["failed"]:
        print(f"skipped {f}", file=sys.stderr)
    return 1 if index["failed"] else 0


def cmd_psl_scores(a) -> int:
    from earmark.train.psl import store_teacher_scores

    kind, _, location = a.data.partition(":")
    if kind != "shards":
        print(f"error: {a.data}: teacher scores are stored beside tar shards; give "
              "--data shards:DIR (write them with earmark shard)", file=sys.stderr)
        return 2
    info = store_teacher_scores(a.teacher, location, a.crop_seconds, a.hop_seconds,
                                batch_size=a.batch_size, progress=_progress(a))
    print(f"stored {info['teacher']}'s scores of {info['crop_seconds']} s crops every "
          f"{info['hop_seconds']} s beside {len(info['sidecars'])} shard(s); train with "
          f"--stage psl --teacher-scores --data {a.data}")
    return 0


def cmd_synth(a) -> int:
    from earmark.data.synth import synthesize

    out = synthesize(a.out, clips_per_class=a.clips_per_class, clip_seconds=a.clip_seconds,
                     soundscapes=a.soundscapes, soundscape_seconds=a.soundscape_seconds,
                     sample_rate=a.sample_rate, snr_db=a.snr_db, seed=a.seed)
    print(f"wrote {out} (use it as --data synth:{out})")
    return 0


def _select_split(manifest, split: str, fold: int | None = None, group: str | None = None,
                  seed: int = 0):
    """The items ``--split`` (and ``--fold``, ``--group``) name, as training splits them:
    with a fold, ``train`` is every other fold and ``valid`` and ``test`` the fold itself;
    without one, the validation items a run with ``seed`` set aside.

    A manifest file without a split column has no test split: ``test`` is then every item.
    An empty split is an error naming the sizes of the others.
    """
    from earmark.data.splits import split_manifest
    from earmark.errors import DataError

    if group is not None:
        manifest.require_groups([group])
    if split == "all":
        part = manifest
    elif fold is not None:
        part = manifest.for_fold(fold)[0 if split == "train" else 1]
    elif split == "test" and not manifest.has_splits:
        print(f"note: {manifest.name} has no split column, so all {len(manifest)} items are "
              "used", file=sys.stderr)
        part = manifest
    else:
        if split == "test":
            manifest.require_split("test")
        part = dict(zip(("train", "valid", "test"), split_manifest(manifest, None, seed)))[split]
    if group is not None:
        part = part.subset(lambda it: it.group == group)
        if not len(part):
            raise DataError(manifest.name, f"group {group!r} has no items in split {split!r}")
    return part


def cmd_eval(a) -> int:
    from earmark.data.paths import missing_files_allowed
    from earmark.data.sources import from_spec
    from earmark.evaluate.metrics import format_table
    from earmark.evaluate.run import evaluate_model, write_report
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    seed = a.seed if a.seed is not None else \
        (tagger.config.get("provenance") or {}).get("seed", 0)
    with missing_files_allowed():  # each missing file is skipped and reported below
        manifest = _select_split(from_spec(a.data), a.split, a.fold, a.group, seed)
    metrics = evaluate_model(tagger, manifest, progress=_progress(a))
    print(format_table(metrics))
    if a.out:
        for path in write_report(metrics, tagger.labels, a.out):
            print(f"wrote {path}")
    if a.json:
        print(json.dumps(metrics))
    return _report_skipped(metrics["failed"], len(manifest))


def cmd_codebook(a) -> int:
    from earmark.data.sources import from_spec
    from earmark.evaluate.codebook import (
        code_statistics,
        format_statistics,
        plot_class_codes,
        plot_code,
    )
    from earmark.files import write_json
    from earmark.infer.tagger import load
    from earmark.models.codebook import FAMILIES

    model = load(a.model, trust_checkpoint=a.trust_checkpoint).model
    written = []
    out = Path(a.out) if a.out else None
    for spec in a.render:
        family, _, code = spec.partition(":")
        if family not in FAMILIES or not code.isdigit():
            print(f"error: --render takes FAMILY:CODE with FAMILY one of {', '.join(FAMILIES)}"
                  f", got {spec!r}", file=sys.stderr)
            return 2
        written.append(plot_code(model, family, int(code),
                                 (out or Path(".")) / f"{family}-{int(code)}.png"))
    if a.data:
        manifest = _select_split(from_spec(a.data), a.split)
        stats = code_statistics(model, manifest, top=a.top, progress=_progress(a))
        print(format_statistics(stats, top=a.top))
        if out:
            out.mkdir(parents=True, exist_ok=True)
            written.append(write_json(out / "codes.json", stats))
            for family in FAMILIES:
                written.append(plot_class_codes(model, stats, family,
                                                out / f"codes-{family}.png", top=a.top))
        for f in stats["failed"]:
            print(f"skipped {f}", file=sys.stderr)
    elif not a.render:
        print("error: give --data SPEC (codes per class) and/or --render FAMILY:CODE",
              file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 1 if a.data and stats["failed"] else 0


def cmd_tag(a) -> int:
    from tqdm import tqdm

    from earmark.errors import AudioError, DataError
    from earmark.infer.stream import iter_chunk_scores
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    problems: list[AudioError] = []
    try:
        files = _tag_inputs(a.inputs, problems)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [str(e) for e in problems]
    out = TagWriter(a.format)  # each row is written as it comes: memory stays flat
    bar = tqdm(total=len(files), desc="tag", unit="file", file=sys.stderr,
               disable=not _progress(a) or len(files) < 2)
    if a.chunk:
        for path in files:
            try:
                for c in iter_chunk_scores(tagger, path, a.chunk):
                    out.row(str(path), c.start, c.end, tagger.top(c.scores, a.top_k))
            except AudioError as err:
                failed.append(str(err))
            bar.update()
    else:  # decoded in background threads, scored in batches, written in order
        from earmark.infer.batch import tag_files

        for path, labels in tag_files(tagger, files, a.top_k, a.batch_size, a.workers):
            if isinstance(labels, AudioError):
                failed.append(str(labels))
            else:
                out.row(str(path), None, None, labels)
            bar.update()
    bar.close()
    out.close()
    return _report_skipped(failed, len(files) + len(problems))


def _report_skipped(failed: list[str], total: int) -> int:
    """Print which of ``total`` files a batch command skipped and why; its exit code (1 when
    any was)."""
    for f in failed:
        print(f"skipped {f}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {total} files failed", file=sys.stderr)
    return 1 if failed else 0


def _tag_inputs(inputs: list[str], problems: list) -> list:
    """Files and folders, clips in packs or shards (``PACK#KEY``) and data SPECs
    (``shards:DIR``, ``hdf5:pack.h5``: every clip of the set), in the order given; paths that
    cannot be read and folders without audio go to ``problems``."""
    from earmark.audio.io import find_audio_files
    from earmark.audio.packed import member_of
    from earmark.data.sources import from_spec, sources

    files: list = []
    for text in inputs:
        if member_of(text) is not None:
            files.append(text)
        elif text.partition(":")[0] in sources() and not Path(text).exists():
            files += [it.path for it in from_spec(text).items]
        else:
            files += find_audio_files([text], errors=problems)
    return files


class TagWriter:
    """``earmark tag``'s output, one row at a time (table, JSON list or TSV), flushed."""

    def __init__(self, fmt: str):
        self.fmt, self.count = fmt, 0
        if fmt == "tsv":
            self._print("file\tstart\tend\trank\tlabel\tscore")
        elif fmt == "json":
            self._print("[", end="")

    def row(self, f: str, s: float | None, e: float | None, tags) -> None:
        if self.fmt == "json":
            item = {"file": f, **({"start": s, "end": e} if s is not None else {}),
                    "labels": [{"label": lab, "score": round(sc, 6)} for lab, sc in tags]}
            text = json.dumps(item, indent=2).replace("\n", "\n  ")
            self._print(("," if self.count else "") + "\n  " + text, end="")
        elif self.fmt == "tsv":
            span = f"{'' if s is None else f'{s:.3f}'}\t{'' if e is None else f'{e:.3f}'}"
            self._print("\n".join(f"{f}\t{span}\t{r}\t{lab}\t{sc:.6f}"
                                   for r, (lab, sc) in enumerate(tags, 1)))
        else:
            where = f"{f}" + ("" if s is None else f" [{s:7.2f}-{e:7.2f} s]")
            self._print(f"{where}  " + "  ".join(f"{lab} {sc:.3f}" for lab, sc in tags))
        self.count += 1

    def close(self) -> None:
        if self.fmt == "json":
            self._print("\n]" if self.count else "]")

    @staticmethod
    def _print(text: str, end: str = "\n") -> None:
        print(text, end=end, flush=True)


def cmd_profile(a) -> int:
    from earmark.models.registry import create_model, list_models
    from earmark.profile import format_profile, profile_model

    if a.list:
        print("\n".join(list_models()))
        return 0
    if a.target is None:
        print("error: give a model name or directory (or --list)", file=sys.stderr)
        return 2
    if Path(a.target).exists():
        from earmark.infer.tagger import load

        model = load(a.target, trust_checkpoint=a.trust_checkpoint).model
    else:
        model = create_model(a.target, a.num_classes, **_model_args(a.model_arg)).eval()
    result = profile_model(model, seconds=a.seconds, batch=a.batch, repeats=a.repeats,
                           threads=a.threads, operators=a.operators)
    print(json.dumps(result, indent=2) if a.json else format_profile(result))
    return 0


def cmd_convert(a) -> int:
    from earmark.models.convert import convert

    out = convert(a.kind, a.checkpoint, a.out, labels=a.labels,
                  trust_checkpoint=a.trust_checkpoint)
    print(f"wrote model directory {out}")
    return 0


def _detection_config(a, tagger):
    from earmark.infer.detect import DetectionConfig, desed_label_map

    saved = tagger.config.get("detection")
    config = DetectionConfig.from_dict(saved) if saved else DetectionConfig()
    changes = {}
    if a.threshold is not None:
        changes["threshold"] = a.threshold
    if a.median is not None:
        changes["median_filter"] = a.median
    if a.min_duration is not None:
        changes["min_duration"] = a.min_duration
    if a.min_gap is not None:
        changes["min_gap"] = a.min_gap
    if a.label_map == "desed":
        changes["label_map"] = desed_label_map(tagger.labels)
    elif a.label_map:
        changes["label_map"] = json.loads(Path(a.label_map).read_text())
    return DetectionConfig.from_dict({**config.to_dict(), **changes})


def cmd_detect(a) -> int:
    from earmark.audio.io import audio_info, find_audio_files
    from earmark.data.events import write_events
    from earmark.errors import AudioError
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    config = _detection_config(a, tagger)
    if a.tune:
        from earmark.data.sources import from_spec

        manifest = from_spec(a.tune)
        split = manifest.split("valid")
        config = tagger.tune_detection(split if len(split) else manifest, config,
                                       chunk_seconds=a.chunk)
        print("tuned thresholds: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                              config.threshold.items()), file=sys.stderr)
        if a.save:
            from earmark.models.directory import model_dir_of

            print(f"saved in {tagger.save_detection(model_dir_of(a.model), config)}",
                  file=sys.stderr)
    problems: list[AudioError] = []
    files = find_audio_files(a.inputs, errors=problems)
    failed = [str(e) for e in problems]
    found, durations = {}, {}
    for path, name in zip(files, display_names(files)):
        try:
            found[name] = tagger.detect(path, config=config, chunk_seconds=a.chunk)
            durations[name] = audio_info(path).duration
        except AudioError as err:
            failed.append(str(err))
            continue
        for e in found[name]:
            print(f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}\t{e.score:.3f}",
                  flush=True)
    if a.out:
        print(f"wrote {write_events(a.out, found, keep_empty=False)}", file=sys.stderr)
    if a.plot and found:
        from earmark.evaluate.plots import plot_timeline

        print(f"wrote {plot_timeline(found, a.plot, durations)}", file=sys.stderr)
    return _report_skipped(failed, len(files) + len(problems))


def display_names(paths: list[Path]) -> list[str]:
    """Names of files in a table: their paths relative to the folder that holds them all
    (``a/x.wav`` and ``b/x.wav`` stay apart; files of one folder are their base names)."""
    import os

    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    except ValueError:  # different drives
        return [str(p) for p in paths]
    return [os.path.relpath(p, root) for p in absolute]


def cmd_sed_eval(a) -> int:
    from earmark.evaluate.sed import format_sed_table, run_sed_eval

    result = run_sed_eval(a.truth, a.pred, a.meta, threshold=a.threshold)
    print(format_sed_table(result))
    if a.json:
        from earmark.files import write_json

        print(f"wrote {write_json(a.json, result)}")
    return 0


def cmd_stream(a) -> int:
    from earmark.infer.stream import stream_file, stream_mic
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    if a.mic:
        stream_mic(tagger, chunk_seconds=a.chunk, top_k=a.top_k, device=a.device,
                   seconds=a.seconds)
        return 0
    if not a.files:
        print("error: give a FILE or --mic", file=sys.stderr)
        return 2
    from earmark.audio.io import find_audio_files
    from earmark.errors import AudioError

    problems: list[AudioError] = []
    files = find_audio_files(a.files, errors=problems)
    failed = [str(e) for e in problems]
    for path in files:
        if len(files) > 1:
            print(f"# {path}", flush=True)
        try:
            n = stream_file(tagger, path, chunk_seconds=a.chunk, realtime=a.realtime,
                            top_k=a.top_k, collect=False, tail=a.tail, compile=a.compile,
                            out=lambda line: print(line, flush=True))
        except AudioError as err:
            failed.append(str(err))
            continue
        print(f"{path}: {n} chunks", file=sys.stderr)
    return _report_skipped(failed, len(files) + len(problems))


# the limits of `earmark serve` that end a request or a connection early: ServeOptions' field
# -> (type, its default, help); see README, "Serving"
SERVE_LIMITS = {
    "max_request_seconds": (float, 60.0, "wall time of one /v1/tag request, waiting included; "
                                         "past it the answer is 503"),
    "max_chunks": (int, 2000, "chunks one /v1/tag request may ask for (chunk=S); more: 422"),
    "max_upload_minutes": (float, 30.0, "audio in one /v1/tag upload, read from its header; "
                                        "more: 422"),
    "max_uploads": (int, 4, "/v1/tag requests read and scored at once; the others wait their "
                            "turn within their time"),
    "max_unconfigured": (int, 8, "WebSocket connections yet to send their configuration; "
                                 "more: 503"),
    "config_seconds": (float, 5.0, "time a new WebSocket has to send its configuration"),
}


def cmd_serve(a) -> int:
    import os

    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        print(f"error: serving needs FastAPI, uvicorn and prometheus_client ({err}); install "
              "them with: pip install 'earmark[serve]'", file=sys.stderr)
        return 2
    from earmark.serve.app import ServeOptions, load_models, serve

    token = a.token or os.environ.get("EARMARK_SERVE_TOKEN") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: serving on {a.host} without a token: anyone who reaches this port "
              "can use the models (set --token or EARMARK_SERVE_TOKEN)", file=sys.stderr)
    limits = {k: getattr(a, k) for k in SERVE_LIMITS if getattr(a, k) is not None}
    options = ServeOptions(token=token, max_streams=a.max_streams,
                           max_upload_mb=a.max_upload_mb,
                           max_stream_minutes=a.max_stream_minutes, chunk_seconds=a.chunk,
                           max_batch=a.max_batch, **limits)
    models = load_models(a.models, trust_checkpoint=a.trust_checkpoint)
    for name, tagger in models.items():
        print(f"serving {name}: {len(tagger.labels)} labels, {tagger.sample_rate} Hz",
              file=sys.stderr)
    serve(models, a.host, a.port, options, log_level=a.log_level)
    return 0


def cmd_export(a) -> int:
    from earmark.export import export_onnx
    from earmark.infer.onnx import onnx_metadata

    if a.format != "onnx":
        print(f"error: unknown format {a.format!r} (onnx)", file=sys.stderr)
        return 2
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    clips = None
    if a.data:  # calibration clips: the test split of a data set (at most 64)
        from earmark.data.sources import from_spec

        manifest = from_spec(a.data)
        test = manifest.split("test")
        items = (test if len(test) else manifest).items[:64]
        clips = [tagger.fit_wave(tagger.waveform(it.path)) for it in items]
    path = export_onnx(tagger, a.out, chunk_seconds=a.chunk, quantize=a.quantize, clips=clips)
    meta = onnx_metadata(path)
    check = meta.get("check") or {}
    print(f"wrote {path}; onnxruntime matches PyTorch within "
          f"{check.get('max_abs_diff', float('nan')):.2e}")
    quant = meta.get("quantization")
    if quant:
        print(f"int8: scores within {quant['max_abs_score_diff']:.3g} of float (mean "
              f"{quant['mean_abs_score_diff']:.3g}), the same top label on "
              f"{100 * quant['top1_agreement']:.1f} % of {quant['clips']} clips")
    return 0


def cmd_demo(a) -> int:
    from earmark.demo import run_demo

    run_demo(a.out, seed=a.seed, epochs=a.epochs)
    return 0


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from earmark._version import __version__

    parser = argparse.ArgumentParser(prog="earmark", description="Efficient audio tagging.")
    parser.add_argument("--version", action="version", version=f"earmark {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("demo", help="synthesise data, train, evaluate, tag, detect and stream, "
                                    "in two to three minutes on 2 cores")
    p.add_argument("--out", default="earmark-demo", help="folder for everything the demo makes")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the demo's own, sized for a CPU)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("synth", help="write the procedural sound-event data set")
    p.add_argument("out", help="folder to write (clips/, soundscapes/, label tables)")
    p.add_argument("--clips-per-class", type=int, default=30, help="event clips of each class")
    p.add_argument("--clip-seconds", type=float, default=1.0, help="length of an event clip")
    p.add_argument("--soundscapes", type=int, default=20,
                   help="soundscapes with strongly labelled events")
    p.add_argument("--soundscape-seconds", type=float, default=10.0,
                   help="length of a soundscape")
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz")
    p.add_argument("--snr-db", type=float, default=10.0,
                   help="events over the soundscapes' background, in dB")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("shard", help="write a data set as WebDataset tar shards (FLAC + JSON)")
    p.add_argument("data", metavar="SPEC", help="data SPEC, e.g. esc50:DIR, audioset:DIR")
    p.add_argument("out", help="folder for the shards and index.json; a rerun continues")
    p.add_argument("--shard-size", type=float, default=512.0, metavar="MB",
                   help="megabytes per shard, about (default 512)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="resample to this rate (default: the first file's)")
    p.add_argument("--workers", type=int, default=1, help="processes that decode and encode")
    p.add_argument("--format", dest="audio_format", choices=("flac", "wav"), default="flac",
                   help="audio of each sample: FLAC (default) or 16-bit WAV (larger, cheaper "
                        "to decode for loaders short of CPU)")
    _add_progress(p)
    p.set_defaults(fn=cmd_shard)

    p = sub.add_parser("psl-scores", help="store a teacher's scores of crops beside tar shards, "
                                          "for --stage psl --teacher-scores")
    p.add_argument("teacher", metavar="TEACHER", help="model or run directory")
    p.add_argument("--data", required=True, metavar="SPEC", help="shards:DIR")
    p.add_argument("--crop-seconds", type=float, required=True,
                   help="the student's crop: two of its chunks (4 for a SAT with 2 s chunks)")
    p.add_argument("--hop-seconds", type=float, default=None,
                   help="between crop starts (default: half a crop, one chunk)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per teacher forward")
    _add_progress(p)
    p.set_defaults(fn=cmd_psl_scores)

    p = sub.add_parser("train", help="train a model; writes a run directory")
    _add_train_args(p)
    p.add_argument("--fold", type=int, default=None, help="hold out this fold (ESC-50 style)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from OUT/checkpoints/last.ckpt, with its saved "
                        "settings")
    p.add_argument("--overwrite", action="store_true",
                   help="OUT holds a run: clear it (checkpoints, logs, metrics, model) and start "
                        "afresh")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("cv", help="k-fold cross validation: one run per fold, or per held-out "
                                  "group with --group-by group")
    _add_train_args(p)
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

    p = sub.add_parser("eval", help="metrics of a model on a split")
    p.add_argument("model", help="model or run directory")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="data set to score, e.g. fsdd:DIR or manifest:FILE")
    p.add_argument("--split", default="test", choices=("train", "valid", "test", "all"),
                   help="which of its items (all: every item)")
    p.add_argument("--fold", type=int, default=None,
                   help="the fold a run held out: --split train is every other fold")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the validation items a run set aside (default: the model's)")
    p.add_argument("--group", default=None, help="only the items of this group (e.g. a speaker)")
    p.add_argument("--out", default=None, help="folder for metrics.json and the PNG plot")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    _add_progress(p)
    _add_trust(p)
    _add_threads(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("codebook", help="a codebook model's codes: the most frequent per class, "
                                        "and codes decoded to spectrogram images")
    p.add_argument("model", help="model or run directory of a codebook model")
    p.add_argument("--data", default=None, help="data SPEC whose labelled clips are counted")
    p.add_argument("--split", default="test", choices=("train", "valid", "test", "all"),
                   help="which of its items are counted")
    p.add_argument("--top", type=int, default=5, help="codes per class and family")
    p.add_argument("--out", default=None,
                   help="folder for codes.json and one PNG sheet per family")
    p.add_argument("--render", action="append", default=[], metavar="FAMILY:CODE",
                   help="draw a code's centroid through its decoder (e.g. patch:17)")
    _add_progress(p)
    _add_trust(p)
    p.set_defaults(fn=cmd_codebook)

    p = sub.add_parser("tag", help="top-k labels per file (or per chunk)")
    p.add_argument("model", help="model directory, run directory, .ckpt or .onnx")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                   help="audio files, folders, clips in packs or shards (PACK#KEY), or data "
                        "SPECs such as shards:DIR (every clip)")
    p.add_argument("--top-k", type=int, default=5, help="labels per file or chunk")
    p.add_argument("--batch-size", type=int, default=32,
                   help="clips of one length scored together (1: one file at a time)")
    p.add_argument("--workers", type=int, default=None,
                   help="threads decoding files ahead (default: a quarter of the cores, at "
                        "least one; decoding costs about a quarter of a short clip's scoring)")
    _add_threads(p)
    p.add_argument("--chunk", type=float, default=None, help="label every S seconds")
    p.add_argument("--format", choices=("table", "json", "tsv"), default="table",
                   help="output on stdout, one row as each file or chunk is scored")
    _add_progress(p)
    _add_trust(p)
    p.set_defaults(fn=cmd_tag)

    p = sub.add_parser("detect", help="sound events as a DESED-style TSV, optional timeline PNG")
    p.add_argument("model", help="model directory, run directory, .ckpt or .onnx")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files or folders")
    p.add_argument("--out", default=None, help="events TSV (filename onset offset event_label)")
    p.add_argument("--plot", default=None, help="timeline PNG")
    p.add_argument("--threshold", type=float, default=None,
                   help="score an event must reach, for every class (default: the model's "
                        "tuned thresholds, else 0.5)")
    p.add_argument("--median", type=float, default=None, help="median filter, seconds")
    p.add_argument("--min-duration", type=float, default=None, help="seconds")
    p.add_argument("--min-gap", type=float, default=None, help="merge gaps shorter than this")
    p.add_argument("--label-map", default=None,
                   help="'desed' (AudioSet -> DESED, as HTS-AT) or a JSON file label -> label")
    p.add_argument("--chunk", type=float, default=None,
                   help="detect from chunk scores every S seconds (models without frames)")
    p.add_argument("--tune", default=None, metavar="SPEC",
                   help="tune per-class thresholds on the strong labels of a data SPEC "
                        "(its valid split if it has one)")
    p.add_argument("--save", action="store_true", help="store the tuned thresholds in the model")
    _add_trust(p)
    _add_threads(p)
    p.set_defaults(fn=cmd_detect)

    p = sub.add_parser("stream", help="online tagging: a line per chunk with its latency")
    p.add_argument("model", help="model directory, run directory, .ckpt or .onnx")
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="audio files or folders, each read block by block in turn")
    p.add_argument("--mic", action="store_true", help="listen to the microphone (earmark[mic])")
    p.add_argument("--device", default=None, help="input device for --mic")
    p.add_argument("--seconds", type=float, default=None, help="stop --mic after this long")
    p.add_argument("--chunk", type=float, default=None,
                   help="seconds per chunk (default: the model's, 1 s for full-context models)")
    p.add_argument("--realtime", action="store_true", help="pace a file at real time")
    p.add_argument("--top-k", type=int, default=3, help="labels per chunk")
    p.add_argument("--tail", choices=("pad", "drop"), default="pad",
                   help="the last piece shorter than a chunk: zero-padded and scored, or "
                        "dropped")
    _add_threads(p, 1, "one chunk rarely gains from more, and waiting OpenMP threads slow "
                       "it down badly on a busy machine")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the streaming model's chunk step (~30 s once, then faster)")
    _add_trust(p)
    p.set_defaults(fn=cmd_stream)

    p = sub.add_parser("serve", help="HTTP and WebSocket tagging with a web page that listens "
                                     "(earmark[serve])")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model or run directory, .onnx, or NAME=PATH (default name: the "
                        "directory's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--token", default=None,
                   help="bearer token required on /v1/* and /metrics (or EARMARK_SERVE_TOKEN)")
    p.add_argument("--max-streams", type=int, default=64, help="open WebSocket streams at once")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest /v1/tag upload")
    p.add_argument("--max-stream-minutes", type=float, default=60.0,
                   help="longest stream (audio received or wall time)")
    p.add_argument("--chunk", type=float, default=None,
                   help="seconds per chunk of full-context models (default 1; streaming "
                        "models use their own)")
    p.add_argument("--max-batch", type=int, default=64, help="stream chunks per model call")
    for name, (kind, default, text) in SERVE_LIMITS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{text} (default {default:g})")
    _add_threads(p)
    p.add_argument("--log-level", default="info", help="uvicorn's log level",
                   choices=("critical", "error", "warning", "info", "debug"))
    _add_trust(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("export", help="ONNX export, checked against PyTorch")
    p.add_argument("model", help="model directory, run directory or .ckpt")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--chunk", type=float, default=None,
                   help="seconds per call (SAT: its chunk; others: a fixed input length)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="int8 weights for the matrix products (ONNX Runtime dynamic "
                        "quantisation); the score difference to float is reported")
    p.add_argument("--data", default=None, metavar="SPEC",
                   help="clips to compare int8 and float scores on (its test split, at most "
                        "64; default: seeded noise)")
    _add_trust(p)
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("sed-eval", help="event- and segment-based F1 and PSDS of detections")
    p.add_argument("--truth", required=True, help="reference events, DESED TSV")
    p.add_argument("--pred", required=True,
                   help="detections TSV, or a folder of predictions_th_<T>.tsv for PSDS")
    p.add_argument("--meta", default=None, help="filename/duration TSV")
    p.add_argument("--threshold", type=float, default=None,
                   help="which folder table gives the F1 scores (default 0.5)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(fn=cmd_sed_eval)

    p = sub.add_parser("convert", help="official checkpoint -> model directory")
    p.add_argument("kind", choices=("htsat-official", "sat-official", "vit-official"),
                   help="whose checkpoint: HTS-AT's Lightning .ckpt, or SAT's / the audio "
                        "ViT's .pt")
    p.add_argument("checkpoint", help="the released checkpoint file")
    p.add_argument("out", help="model directory to write")
    p.add_argument("--labels", default=None, help="label file (default: the 527 AudioSet ones)")
    _add_trust(p)
    p.set_defaults(fn=cmd_convert)

    p = sub.add_parser("profile", help="parameters, FLOPs, memory, latency, real-time factor")
    p.add_argument("target", nargs="?", metavar="NAME_OR_MODEL",
                   help="a registry name (see --list) or a model directory")
    p.add_argument("--list", action="store_true", help="list the registry names")
    p.add_argument("--seconds", type=float, default=None,
                   help="input length (default: the model's clip, or chunk for SAT)")
    p.add_argument("--batch", type=int, default=1, help="clips per forward pass")
    p.add_argument("--repeats", type=int, default=20, help="timed forward passes")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--num-classes", type=int, default=527,
                   help="outputs of a registry model (527: AudioSet)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model argument (JSON value), e.g. token_learner=8")
    p.add_argument("--operators", type=int, default=0, metavar="N",
                   help="also list the N operators that take the most time in one forward "
                        "pass (torch.profiler): where the time goes")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    _add_trust(p)
    p.set_defaults(fn=cmd_profile)
    for p in sub.choices.values():
        p.allow_abbrev = False  # --epoch must not pass for --epochs
        p.formatter_class = DefaultsFormatter
        if p.description is None:  # --help opens with what the command does
            p.description = next(a.help for a in sub._choices_actions if a.dest == p.prog.split()[-1])
    return parser


def typed_options(argv: list[str]) -> set[str]:
    """The destinations of the options typed in ``argv``: parsed again with every default
    suppressed, the namespace holds only what the command line set.

        >>> sorted(typed_options(["train", "--data", "x", "--out", "r", "--epochs=5"]))
        ['data', 'epochs', 'out']
    """
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = set()
    for p in [parser, *(c for s in subparsers for c in s.choices.values())]:
        for action in p._actions:
            if action.option_strings:
                action.default = argparse.SUPPRESS
                options.add(action.dest)
    return set(vars(parser.parse_args(argv))) & options


def main(argv: list[str] | None = None) -> int:
    from earmark.errors import EarmarkError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    threads = getattr(args, "model_threads", None)
    if threads is not None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        return args.fn(args)
    except (EarmarkError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _add_threads(p: argparse.ArgumentParser, default: int | None = None, why: str = "") -> None:
    p.add_argument("--threads", dest="model_threads", type=int, default=default,
                   help="torch threads for the model" + (f" ({why})" if why else
                                                           " (default: torch's, one per core)"))


if __name__ == "__main__":
    sys.exit(main())
