"""Sound event detection on synthetic soundscapes: does HTS-AT locate events, or only tag them?

    python bench/detection.py [--soundscapes 300] [--epochs 30]

Synthesises soundscapes (1-4 events over a noise background, exact strong labels), trains
``htsat-tiny`` on their clip-level (weak) labels, tunes per-class thresholds on the
validation soundscapes, and detects events in the held-out test soundscapes. It compares
event-based F1 (200 ms onset collar, offset collar max(200 ms, 20 %)) and segment-based F1
(1 s) with a frame-agnostic baseline: the same model's clip tags spread over the whole clip.
Writes bench/results/detection.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import earmark
from earmark.audio.io import audio_info
from earmark.data.synth import load_soundscapes, synthesize
from earmark.evaluate.sed import Event, event_based, segment_based
from earmark.profile import matmul_gflops
from earmark.train.config import TrainConfig
from earmark.train.run import train

HERE = Path(__file__).resolve().parent


def f1s(truth, pred, durations) -> dict:
    ev = event_based(truth, pred, durations=durations)
    seg = segment_based(truth, pred, durations=durations)
    return {"event_f1_macro": ev["macro"]["f1"], "event_f1_micro": ev["micro"]["f1"],
            "segment_f1_macro": seg["macro"]["f1"], "segment_f1_micro": seg["micro"]["f1"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--soundscapes", type=int, default=300)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    work = HERE / "results" / "detection-run"
    t0 = time.time()
    data = synthesize(work / "data", clips_per_class=2, soundscapes=a.soundscapes,
                      soundscape_seconds=10.0, sample_rate=32000, seed=a.seed)
    config = TrainConfig(data=f"synth:{data}/soundscapes.csv", out=str(work / "run"),
                         model="htsat-tiny", clip_seconds=10.0, epochs=a.epochs, batch_size=16,
                         lr=1e-3, warmup_epochs=2, gain_db=6, time_mask=64, time_masks=2,
                         freq_mask=8, freq_masks=2, top_k_average=3, seed=a.seed,
                         progress=False)
    result = train(config, overwrite=True)  # its own folder
    tagger = earmark.load(result["model_dir"])
    scapes = load_soundscapes(data)
    detection = tagger.tune_detection(scapes.split("valid"))
    test = scapes.split("test")
    truth, pred, base, durations = {}, {}, {}, {}
    for item in test.items:
        name = Path(item.path).name
        durations[name] = audio_info(item.path).duration
        truth[name] = [Event(on, off, lab) for on, off, lab in scapes.meta["events"][item.path]]
        pred[name] = tagger.detect(item.path, config=detection)
        clip = tagger.scores(item.path)
        base[name] = [Event(0.0, durations[name], lab, float(s))
                      for lab, s in zip(tagger.labels, clip.tolist())
                      if s >= detection.threshold_of(lab)]
    report = {"benchmark": "detection", "soundscapes": a.soundscapes,
              "test_soundscapes": len(test), "epochs": result["epochs"],
              "train_seconds": result["train_seconds"], "clip_mAP": result["test"]["mAP"],
              "thresholds": detection.threshold, "htsat_tiny_frames": f1s(truth, pred, durations),
              "baseline_clip_tags_over_whole_clip": f1s(truth, base, durations),
              "wall_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    out = HERE / "results" / "detection.json"
    report["matmul_gflops"] = matmul_gflops()  # the machine, right after the run
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(test)} test soundscapes; clip mAP {report['clip_mAP']:.3f}; "
          f"trained {report['epochs']} epochs in {report['train_seconds']:.0f} s")
    print(f"{'':<34}{'event F1':>10}{'segment F1':>12}   (macro / micro)")
    for name, key in (("htsat-tiny frame scores", "htsat_tiny_frames"),
                      ("baseline: clip tags, whole clip", "baseline_clip_tags_over_whole_clip")):
        r = report[key]
        print(f"{name:<34}{r['event_f1_macro']:>5.3f}/{r['event_f1_micro']:.3f}"
              f"{r['segment_f1_macro']:>7.3f}/{r['segment_f1_micro']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
