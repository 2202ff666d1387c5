"""TokenLearner study (paper 000, tables 2-3) on data we have: FSDD digits (keyword task) and
`earmark synth` event clips (environmental task).

    python bench/tokenlearner.py --data fsdd --rows tasr-10l-nt-8h,tasr-10l-8t-8h --epochs 20
    python bench/tokenlearner.py --data synth --rows tesc-4l-nt-8h,tesc-4l-8t-8h
    python bench/tokenlearner.py --data fsdd --vit     # the paper's future-work question

Each row is trained with the paper's defaults (section 4.3: AdamW, learning rate and weight
decay 1e-4, batch 64) for ``--epochs`` epochs, then scored on the test split: top-1 and
top-3 accuracy, FLOPs per 1 s clip and parameters (``earmark.profile``), median latency.
``--vit`` adds TokenLearner (8 tokens, halfway up) to the FSDD ViT of bench/fsdd.py and
trains both with that benchmark's recipe (30 epochs, augmentation, checkpoint averaging). Results are appended to bench/results/tokenlearner.json; the plot
bench/results/tokenlearner.png shows accuracy against FLOPs for every run so far.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import earmark
from earmark.data.sources import from_spec
from earmark.evaluate.metrics import top_k_accuracy
from earmark.profile import matmul_gflops, profile_model
from earmark.train.config import TrainConfig
from earmark.train.run import train

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "tokenlearner.json"
FSDD = HERE.parent.parent / "shared" / "data" / "fsdd"
FSDD_VIT = {"depth": 4, "embed_dim": 128, "num_heads": 4, "patch_stride": [16, 8]}


def data_spec(name: str) -> str:
    if name == "fsdd":
        return f"fsdd:{FSDD}"
    root = HERE / "results" / "tokenlearner-synth"
    if not (root / "synth.json").is_file():
        from earmark.data.synth import synthesize

        synthesize(root, clips_per_class=100, soundscapes=1, seed=0)
    return f"synth:{root}"


def run(name: str, model: str, model_args: dict, spec: str, epochs: int, lr: float,
        wd: float, batch: int) -> dict:
    out = HERE / "results" / f"tokenlearner-runs/{name}"
    if model.startswith("vit"):  # the FSDD recipe of bench/fsdd.py (augmentation, schedule)
        sys.path.insert(0, str(HERE))
        from fsdd import BEST

        recipe = {k: v for k, v in BEST.items() if k not in ("model", "model_args")}
        config = TrainConfig(data=spec, out=str(out), model=model, model_args=model_args,
                             progress=False, **recipe)
    else:
        config = TrainConfig(data=spec, out=str(out), model=model, model_args=model_args,
                             clip_seconds=1.0, epochs=epochs, batch_size=batch, lr=lr,
                             weight_decay=wd, warmup_epochs=1, progress=False)
    result = train(config, overwrite=True)  # its own folder
    tagger = earmark.load(result["model_dir"])
    test = from_spec(spec).split("test")
    scores = torch.stack([tagger.scores(it.path) for it in test.items]).numpy()
    index = tagger.labels.index
    targets = [index(it.labels[0]) for it in test.items]
    prof = profile_model(tagger.model, seconds=1.0, repeats=10)
    return {"run": name, "model": model, "model_args": model_args, "data": spec.split(":")[0],
            "top1": top_k_accuracy(scores, targets, k=1),
            "top3": top_k_accuracy(scores, targets, k=3),
            "gflops_per_clip": prof["gflops_per_clip"], "params": prof["params"],
            "latency_ms": prof["latency_ms"]["median"], "epochs": result["epochs"],
            "train_seconds": result["train_seconds"]}


def retime(rows: list[dict], threads: int) -> dict:
    """Every row's latency again, in one run at ``threads`` threads: its architecture with
    random weights (the same work per clip as the trained model), 1 s, median of 10 passes,
    the machine's matmul rate timed before and after. Stored in each row as
    ``latency_retimed_ms``; returns the run's settings."""
    before = matmul_gflops()
    for r in rows:
        classes = 10 if r["data"] == "fsdd" else 8
        model = earmark.create_model(r["model"], classes, **r.get("model_args", {})).eval()
        prof = profile_model(model, seconds=1.0, repeats=10, threads=threads)
        r["latency_retimed_ms"] = prof["latency_ms"]["median"]
        print(f"{r['run']:<28} {r['latency_retimed_ms']:.2f} ms (trained: "
              f"{r['latency_ms']:.2f} ms)", flush=True)
    return {"threads": threads, "matmul_gflops_before": before,
            "matmul_gflops_after": matmul_gflops()}


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for data, marker in (("fsdd", "o"), ("synth", "s")):
        sel = [r for r in rows if r["data"] == data]
        ax.scatter([r["gflops_per_clip"] for r in sel], [100 * r["top1"] for r in sel],
                   marker=marker, label=data)
        for r in sel:
            ax.annotate(r["run"], (r["gflops_per_clip"], 100 * r["top1"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per 1 s clip")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict]) -> str:
    """The runs as a markdown table, each TokenLearner row with its FLOP ratio to the NT row
    of the same depth and heads."""
    retimed = all("latency_retimed_ms" in r for r in rows)
    lines = ["| run | epochs | top-1 | top-3 | GFLOPs / clip | params | latency"
             + (" (one run)" if retimed else "") + " | training |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_run = {r["run"]: r for r in rows}
    order = sorted(rows, key=lambda r: (r["data"], r["model"].split("-")[:2] != ["vit"],
                                        r["run"]))
    for r in order:
        flops = f"{r['gflops_per_clip']:.3f}"
        parts = r["run"].split("-")
        if len(parts) == 4 and parts[2] != "nt":
            nt = by_run.get("-".join(parts[:2] + ["nt"] + parts[3:]))
            if nt:
                flops += f" ({nt['gflops_per_clip'] / r['gflops_per_clip']:.2f}x fewer)"
        lines.append(f"| {r['run']} | {r['epochs']} | {100 * r['top1']:.1f} % | "
                     f"{100 * r['top3']:.1f} % | {flops} | {r['params'] / 1e6:.2f} M | "
                     f"{r['latency_retimed_ms' if retimed else 'latency_ms']:.2f} ms | "
                     f"{r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("fsdd", "synth"), default="fsdd")
    p.add_argument("--rows", default="", help="comma-separated tokenlearner presets")
    p.add_argument("--vit", action="store_true", help="also ViT with and without TokenLearner")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--table", action="store_true", help="print the results as markdown")
    p.add_argument("--retime", type=int, default=0, metavar="THREADS",
                   help="time every stored row's architecture again in one run at THREADS "
                        "threads (latencies of separate runs on a shared machine differ)")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(RESULTS.read_text())))
        return 0
    if a.retime:
        rows = json.loads(RESULTS.read_text())
        settings = retime(rows, a.retime)
        for r in rows:
            r["retime"] = settings
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"matmul {settings['matmul_gflops_before']:.1f} GFLOP/s before, "
              f"{settings['matmul_gflops_after']:.1f} after; wrote {RESULTS}")
        return 0
    spec = data_spec(a.data)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    jobs = [(f"{a.data}/{r}", r, {}) for r in filter(None, a.rows.split(","))]
    if a.vit:
        jobs += [(f"{a.data}/vit", "vit-tiny", dict(FSDD_VIT)),
                 (f"{a.data}/vit-tl8", "vit-tiny", dict(FSDD_VIT, token_learner=8))]
    for name, model, args in jobs:
        result = run(name, model, args, spec, a.epochs, a.lr, a.weight_decay, a.batch)
        result["matmul_gflops"] = matmul_gflops()  # the machine, right after the row
        rows = [r for r in rows if r["run"] != name] + [result]
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"{name:<28} top-1 {result['top1']:.3f} top-3 {result['top3']:.3f} "
              f"GFLOPs {result['gflops_per_clip']:.4f} params {result['params'] / 1e6:.2f} M "
              f"latency {result['latency_ms']:.2f} ms ({result['train_seconds']:.0f} s)",
              flush=True)
    if rows:
        plot(rows, HERE / "results" / "tokenlearner.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
