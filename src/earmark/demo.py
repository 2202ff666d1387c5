"""``earmark demo``: the whole path on a fresh machine in two to three minutes on 2 CPU cores
(144 s measured with other work running), with no network.

Synthesises sound-event clips and soundscapes, trains a small audio ViT on the clips,
evaluates it on the held-out clips, tags a few files, detects the events of a soundscape
(a DESED-style TSV and a timeline PNG), streams it a second at a time, and prints where
everything went.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from earmark.train.config import TrainConfig

# A ViT-T narrowed and shortened so that training fits in about two minutes on 2 CPU cores.
DEMO_MODEL_ARGS = {"depth": 4, "embed_dim": 128, "num_heads": 4, "patch_stride": [16, 8]}


def run_demo(out: str | Path = "earmark-demo", seed: int = 0, epochs: int | None = None,
             clips_per_class: int = 100, progress: bool = True) -> dict:
    from earmark.data.sources import from_spec
    from earmark.data.synth import synthesize
    from earmark.evaluate.metrics import format_table
    from earmark.evaluate.run import write_report
    from earmark.infer.tagger import load
    from earmark.train.run import train

    out = Path(out)
    t0 = time.time()
    data = synthesize(out / "data", clips_per_class=clips_per_class, soundscapes=4, seed=seed)
    print(f"[demo] synthesised sound events in {data} ({time.time() - t0:.0f} s)")

    config = TrainConfig(data=f"synth:{data}", out=str(out / "run"), model="vit-tiny",
                         model_args=DEMO_MODEL_ARGS, clip_seconds=1.0, epochs=epochs or 25,
                         batch_size=32, lr=1e-3, warmup_epochs=1, gain_db=6, shift=0.1,
                         polarity=0.5, time_mask=10, freq_mask=8, top_k_average=3, seed=seed,
                         progress=progress,
                         # sigmoid outputs: a chunk with no event scores low on every class
                         multi_label=True)
    print(f"[demo] training a small audio ViT on {config.data}")
    result = train(config, overwrite=True)  # its own folder
    model_dir = Path(result["model_dir"])
    print(f"[demo] trained in {result['train_seconds']:.0f} s; model directory {model_dir}")

    tagger = load(model_dir)
    test = from_spec(config.data).split("test")
    # training already scored the exported model on the held-out clips
    metrics = json.loads((Path(config.out) / "test_metrics.json").read_text())
    print(format_table(metrics))
    reports = write_report(metrics, tagger.labels, out / "eval")

    print("[demo] tagging a few held-out clips:")
    for item in test.items[:: max(1, len(test) // 4)][:4]:
        tags = tagger.tag(item.path, top_k=3)
        print(f"  {Path(item.path).name:<28} truth {item.labels[0]:<9} -> "
              + ", ".join(f"{lab} {s:.2f}" for lab, s in tags))
    detected = detect_soundscape(tagger, data, out / "detect")
    stream_soundscape(tagger, data)
    print(f"[demo] done in {time.time() - t0:.0f} s. Written:")
    print(f"  data        {data}")
    print(f"  run         {config.out}  (checkpoints, logs, metrics.json)")
    print(f"  model       {model_dir}  (try: earmark tag {model_dir} {data}/clips)")
    for path in reports:
        print(f"  report      {path}")
    for path in detected:
        print(f"  detection   {path}")
    return {"metrics": metrics, "detection": [str(p) for p in detected], "model_dir": str(model_dir), "seconds": time.time() - t0}


def detect_soundscape(tagger, data: Path, out: Path) -> list[Path]:
    """Detect the events of the first synthetic soundscape from half-second chunk scores."""
    from earmark.audio.io import audio_info
    from earmark.data.events import write_events
    from earmark.data.synth import load_soundscapes
    from earmark.evaluate.plots import plot_timeline
    from earmark.infer.events import DetectionConfig

    scapes = load_soundscapes(data)
    item = scapes.items[0]
    config = DetectionConfig(threshold=0.5, min_gap=0.5)
    events = tagger.detect(item.path, config=config, chunk_seconds=0.5)
    truth = scapes.meta["events"][item.path]
    name = Path(item.path).name
    print(f"[demo] events in {name} (truth | detected):")
    for onset, offset, label in truth:
        print(f"  truth     {onset:6.2f}-{offset:6.2f} s  {label}")
    for e in events:
        print(f"  detected  {e.onset:6.2f}-{e.offset:6.2f} s  {e.label}  ({e.score:.2f})")
    tsv = write_events(out / "events.tsv", {name: events}, keep_empty=False)
    from earmark.data.events import Event

    seconds = audio_info(item.path).duration
    panels = {f"{name} (truth)": [Event(a, b, lab) for a, b, lab in truth],
              f"{name} (detected)": events}
    png = plot_timeline(panels, out / "timeline.png", {k: seconds for k in panels})
    return [tsv, png]


def stream_soundscape(tagger, data: Path) -> None:
    """Tag the first soundscape online, one line per second, as ``earmark stream`` does."""
    from earmark.cli.use import chunk_line
    from earmark.data.synth import load_soundscapes
    from earmark.infer.stream import stream_file

    item = load_soundscapes(data).items[0]
    print(f"[demo] streaming {Path(item.path).name}, one line per 1 s chunk "
          "(sliding window for this full-context model):")
    stream_file(tagger, item.path, chunk_seconds=1.0, top_k=2, collect=False,
                on_result=lambda result: print("  " + chunk_line(result)))
