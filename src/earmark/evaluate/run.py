"""``earmark eval``: score every file of a split with a saved model and compute the metrics."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from earmark.audio.clips import load_segment
from earmark.data.labels import targets as manifest_targets
from earmark.data.manifest import Manifest
from earmark.errors import AudioError, DataError
from earmark.evaluate.metrics import evaluate
from earmark.files import write_json


def evaluate_model(model, manifest: Manifest, progress: bool = True) -> dict:
    """Metrics of ``model`` (a Tagger, model directory or run directory) on ``manifest``.

    Files that cannot be read are skipped and listed under ``"failed"``.
    """
    from earmark.infer.tagger import Tagger, load

    if not len(manifest):
        raise DataError(manifest.name, "no items to evaluate")
    tagger = model if isinstance(model, Tagger) else load(model)
    if tagger.labels != manifest.labels:
        missing = sorted(set(manifest.labels) - set(tagger.labels))
        if missing:
            raise DataError(manifest.name, f"labels the model does not know: {missing[:10]}")
    index = {lab: i for i, lab in enumerate(tagger.labels)}
    target_all = manifest_targets(manifest)  # (N, C_manifest)
    # reorder the manifest's columns to the model's label order
    cols = torch.zeros(target_all.shape[0], len(tagger.labels))
    for j, lab in enumerate(manifest.labels):
        cols[:, index[lab]] = target_all[:, j]
    scores, targets, failed = [], [], []
    for i, item in enumerate(tqdm(manifest.items, desc="eval", disable=not progress,
                                  unit="file")):
        try:
            scores.append(tagger.score_wave(load_segment(item.path, tagger.sample_rate,
                                                     item.onset, item.offset)))
        except AudioError as err:
            failed.append(str(err))
            continue
        targets.append(cols[i])
    if not scores:
        raise DataError(manifest.name, f"no file could be scored ({len(failed)} failed)")
    # the metrics follow the data: a sigmoid model on single-label data still gets accuracy
    metrics = evaluate(torch.stack(scores).numpy(), torch.stack(targets).numpy(),
                       tagger.labels, multi_label=manifest.multi_label)
    metrics["failed"] = failed
    return metrics


def write_report(metrics: dict, labels: list[str], out_dir: str | Path) -> list[Path]:
    """metrics.json plus a confusion matrix (single-label) or per-class AP bars (multi-label)."""
    from earmark.evaluate.plots import plot_confusion_matrix, plot_per_class_ap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_json(out_dir / "metrics.json", metrics)]
    if "confusion_matrix" in metrics:
        written.append(plot_confusion_matrix(metrics["confusion_matrix"], labels,
                                             out_dir / "confusion_matrix.png"))
    else:
        ap = [row.get("AP") for row in metrics.get("per_class", [])]
        written.append(plot_per_class_ap(ap, labels, out_dir / "per_class_ap.png"))
    return written
