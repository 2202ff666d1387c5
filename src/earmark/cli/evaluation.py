"""Commands that measure: ``eval``, ``codebook`` and ``sed-eval``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from earmark.cli.options import (
    add_model,
    add_progress,
    add_threads,
    add_trust,
    command,
    error,
    progress,
    report_skipped,
)

SPLITS = ("train", "valid", "test", "all")


def add_commands(sub) -> None:
    p = command(sub, "eval", "metrics of a model on a split")
    add_model(p)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="data set to score, e.g. fsdd:DIR or manifest:FILE")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="which of its items (all: every item)")
    p.add_argument("--fold", type=int, default=None,
                   help="the fold a run held out: --split train is every other fold")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the validation items a run set aside (default: the model's)")
    p.add_argument("--group", default=None, help="only the items of this group (e.g. a speaker)")
    p.add_argument("--out", default=None, help="folder for metrics.json and the PNG plot")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    add_progress(p)
    add_trust(p)
    add_threads(p)
    p.set_defaults(fn=cmd_eval)

    p = command(sub, "codebook", "a codebook model's codes: the most frequent per class, "
                                        "and codes decoded to spectrogram images")
    add_model(p, "a codebook model")
    p.add_argument("--data", default=None, help="data SPEC whose labelled clips are counted")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="which of its items are counted")
    p.add_argument("--top", type=int, default=5, help="codes per class and family")
    p.add_argument("--out", default=None,
                   help="folder for codes.json and one PNG sheet per family")
    p.add_argument("--render", action="append", default=[], metavar="FAMILY:CODE",
                   help="draw a code's centroid through its decoder (e.g. patch:17)")
    add_progress(p)
    add_trust(p)
    p.set_defaults(fn=cmd_codebook)


def add_detection_scoring(sub) -> None:
    p = command(sub, "sed-eval", "event- and segment-based F1 and PSDS of detections")
    p.add_argument("--truth", required=True, help="reference events, DESED TSV")
    p.add_argument("--pred", required=True,
                   help="detections TSV, or a folder of predictions_th_<T>.tsv for PSDS")
    p.add_argument("--meta", default=None, help="filename/duration TSV")
    p.add_argument("--threshold", type=float, default=None,
                   help="which folder table gives the F1 scores (default 0.5)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(fn=cmd_sed_eval)


def selected(spec: str, split: str, fold: int | None = None, group: str | None = None,
             seed: int = 0):
    """The items of a data SPEC that ``--split`` (``--fold``, ``--group``) name, with a note on
    stderr where a manifest without a split column stands in whole for its test split."""
    from earmark.data.sources import from_spec
    from earmark.data.splits import select_split

    manifest = from_spec(spec)
    part = select_split(manifest, split, fold, group, seed)
    if split == "test" and fold is None and not manifest.has_splits:
        print(f"note: {manifest.name} has no split column, so all {len(manifest)} items are "
              "used", file=sys.stderr)
    return part


def cmd_eval(a) -> int:
    from earmark.data.paths import missing_files_allowed
    from earmark.evaluate.metrics import format_table
    from earmark.evaluate.run import evaluate_model, write_report
    from earmark.infer.tagger import load

    tagger = load(a.model, trust_checkpoint=a.trust_checkpoint)
    seed = a.seed if a.seed is not None else tagger.training_seed
    with missing_files_allowed():  # each missing file is skipped and reported below
        manifest = selected(a.data, a.split, a.fold, a.group, seed)
    metrics = evaluate_model(tagger, manifest, progress=progress(a))
    print(format_table(metrics))
    if a.out:
        for path in write_report(metrics, tagger.labels, a.out):
            print(f"wrote {path}")
    if a.json:
        print(json.dumps(metrics))
    return report_skipped(metrics["failed"], len(manifest))


def cmd_codebook(a) -> int:
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
            return error(f"--render takes FAMILY:CODE with FAMILY one of {', '.join(FAMILIES)}"
                         f", got {spec!r}")
        written.append(plot_code(model, family, int(code),
                                 (out or Path(".")) / f"{family}-{int(code)}.png"))
    if a.data:
        stats = code_statistics(model, selected(a.data, a.split), top=a.top,
                                progress=progress(a))
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
        return error("give --data SPEC (codes per class) and/or --render FAMILY:CODE")
    for path in written:
        print(f"wrote {path}")
    return 1 if a.data and stats["failed"] else 0


def cmd_sed_eval(a) -> int:
    from earmark.evaluate.sed import format_sed_table, run_sed_eval

    result = run_sed_eval(a.truth, a.pred, a.meta, threshold=a.threshold)
    print(format_sed_table(result))
    if a.json:
        from earmark.files import write_json

        print(f"wrote {write_json(a.json, result)}")
    return 0
