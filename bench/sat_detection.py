"""Streaming detection: SAT students at 1 s and 2 s delay on synthetic soundscapes.

    python bench/sat_detection.py [--teacher DIR] [--epochs 20]

Paper 003's last stage on data we have: the ``htsat-tiny`` that ``bench/detection.py``
trained on weakly labelled soundscapes (``--teacher``, or trained here) labels crops twice
the chunk length, and a ``sat-tiny`` student with 1 s or 2 s chunks learns those
pseudo-strong labels (``earmark train --stage psl``). Each student then streams the held-out
soundscapes chunk by chunk (``Tagger.stream``, cache primed with silence); per-class
thresholds are tuned on the validation soundscapes' chunk scores; segment-based F1 (1 s)
and event-based F1 are computed on the test soundscapes. Writes
bench/results/sat_detection.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import earmark
from earmark.audio.io import audio_info
from earmark.data.synth import load_soundscapes
from earmark.evaluate.sed import Event, event_based, segment_based
from earmark.infer.events import DetectionConfig, chunks_to_events
from earmark.infer.thresholds import tune_thresholds
from earmark.profile import matmul_gflops
from earmark.train.config import TrainConfig
from earmark.train.run import train

HERE = Path(__file__).resolve().parent
RUN = HERE / "results" / "detection-run"


def streamed(tagger, path: str) -> list:
    session = tagger.stream()
    results = []
    for block in np.array_split(earmark.load_audio(path, tagger.sample_rate)[0].numpy(), 50):
        results += session.push(block)
    return results + session.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=str(RUN / "run" / "model"))
    p.add_argument("--epochs", type=int, default=20)
    a = p.parse_args(argv)
    if not Path(a.teacher).is_dir():
        print(f"no teacher at {a.teacher}: run bench/detection.py first", file=sys.stderr)
        return 2
    data = RUN / "data"
    scapes = load_soundscapes(data)
    report = {"benchmark": "sat_detection", "teacher": a.teacher, "rows": {}}
    for chunk in (1.0, 2.0):
        t0 = time.time()
        config = TrainConfig(data=f"synth:{data}/soundscapes.csv",
                             out=str(HERE / "results" / f"sat-{chunk:.0f}s-run"),
                             model="sat-tiny", model_args={"chunk_seconds": chunk},
                             stage="psl", teacher=a.teacher, epochs=a.epochs, batch_size=16,
                             lr=5e-4, warmup_epochs=1, top_k_average=3, progress=False)
        result = train(config, overwrite=True)  # its own folder
        tagger = earmark.load(result["model_dir"])
        valid = scapes.split("valid")
        scores = [torch.stack([r.scores for r in streamed(tagger, it.path)]).numpy()
                  for it in valid.items]
        truths = [scapes.meta["events"][it.path] for it in valid.items]
        detection = DetectionConfig(threshold=tune_thresholds(scores, truths, tagger.labels,
                                                               chunk, metric="frame_f1"))
        truth, pred, durations = {}, {}, {}
        for it in scapes.split("test").items:
            name = Path(it.path).name
            durations[name] = audio_info(it.path).duration
            truth[name] = [Event(on, off, lab) for on, off, lab in scapes.meta["events"][it.path]]
            pred[name] = chunks_to_events(streamed(tagger, it.path), tagger.labels, detection)
        seg = segment_based(truth, pred, durations=durations)
        ev = event_based(truth, pred, durations=durations)
        report["rows"][f"{chunk:.0f} s"] = {
            "segment_f1_macro": seg["macro"]["f1"], "segment_f1_micro": seg["micro"]["f1"],
            "event_f1_macro": ev["macro"]["f1"], "train_seconds": result["train_seconds"],
            "epochs": result["epochs"], "seconds": round(time.time() - t0, 1)}
    out = HERE / "results" / "sat_detection.json"
    report["matmul_gflops"] = matmul_gflops()  # the machine, right after the run
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'delay':<8}{'segment F1 macro/micro':>24}{'event F1 macro':>16}")
    for delay, r in report["rows"].items():
        print(f"{delay:<8}{r['segment_f1_macro']:>15.3f}/{r['segment_f1_micro']:.3f}"
              f"{r['event_f1_macro']:>16.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
