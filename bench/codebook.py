"""Codebook bag-of-words tagger (paper 001) on data we have, beside the best transformer.

    python bench/codebook.py --data fsdd                       # the grid on FSDD digits
    python bench/codebook.py --data synth                      # multi-label soundscapes (mAP)
    python bench/codebook.py --data fsdd --sizes 256 --compression 10 --heads 512:0.4 --masks 0

The grid follows the paper's figures 2 and 3: code-book size D x compression F x head
(width:dropout) without masking; then the masking probabilities on the configuration with
the best validation score (chosen on validation, reported on test). Runs of one F share
their autoencoders, runs of one (F, D) their code books and histograms (``stages_from``).
Each row: test top-1 (FSDD) or clip mAP (soundscapes), the validation score, parameters,
GFLOPs and median latency per second of audio (``earmark.profile``), training time.

The transformer beside it is the one earmark trained on the same split: for FSDD the ViT of
bench/fsdd.py (bench/results/fsdd.json), for the soundscapes the htsat-tiny of
bench/detection.py (bench/results/detection.json: same synthesis, seed and split). Results go
to bench/results/codebook.json (rows replaced by name).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from earmark.profile import matmul_gflops, profile_model
from earmark.train.config import TrainConfig
from earmark.train.run import best_checkpoints, train

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "codebook.json"
FSDD = HERE.parent.parent / "shared" / "data" / "fsdd"


def data_spec(name: str) -> str:
    if name == "fsdd":
        if not FSDD.is_dir():
            sys.exit(f"FSDD not found at {FSDD}")
        return f"fsdd:{FSDD}"
    from earmark.data.synth import synthesize

    # the soundscapes of bench/detection.py: same call, same seed, so the same files
    data = synthesize(HERE / "results" / "detection-run" / "data", clips_per_class=2,
                      soundscapes=300, soundscape_seconds=10.0, sample_rate=32000, seed=0)
    return f"synth:{data}/soundscapes.csv"


def transformer(name: str) -> dict:
    if name == "fsdd":
        ref = json.loads((HERE / "results" / "fsdd.json").read_text())
        return {"model": "vit (bench/fsdd.py)", "score": ref["test_accuracy"],
                "metric": "top-1", "train_seconds": ref["train_seconds"]}
    ref = json.loads((HERE / "results" / "detection.json").read_text())
    return {"model": "htsat-tiny (bench/detection.py)", "score": ref["clip_mAP"],
            "metric": "clip mAP", "train_seconds": ref["train_seconds"]}


def run_one(a, spec: str, name: str, model_args: dict, stages_from: Path | None) -> dict:
    out = HERE / "results" / "codebook-runs" / a.data / name
    config = TrainConfig(
        data=spec, out=str(out), model="codebook", model_args=model_args, epochs=a.epochs,
        batch_size=a.batch, lr=a.lr, weight_decay=a.weight_decay, warmup_epochs=1,
        ae_steps=a.ae_steps, ae_batch=a.ae_batch, codebook_chunks=a.chunks,
        kmeans_epochs=a.kmeans_epochs, stages_from=str(stages_from) if stages_from else None,
        feature_views=a.views, gain_db=a.gain_db,
        top_k_average=1, progress=False)
    t0 = time.time()
    result = train(config, overwrite=True)  # its own folder
    wall = time.time() - t0
    test = result["test"]
    best = best_checkpoints(out / "checkpoints", 1)
    val = float(best[0].name.split("score=")[1][:-5]) if best else float("nan")
    from earmark.infer.tagger import load

    model = load(result["model_dir"]).model
    prof = profile_model(model, seconds=1.0, repeats=10)
    stages = {}
    for stage in ("autoencoder", "codebook"):
        info = json.loads((out / "stages" / f"{stage}.safetensors.json").read_text())
        stages[stage] = info.get("seconds") if "copied_from" not in info else "reused"
    multi = test["task"] == "multi-label"
    return {"run": f"{a.data}/{name}", "data": a.data, "model_args": model_args,
            "score": test["mAP"] if multi else test["accuracy"],
            "metric": "clip mAP" if multi else "top-1", "val_score": val,
            "top3": None if multi else test["top_k_accuracy"].get("3"),
            "params": prof["params"], "gflops_per_second": prof["gflops_per_clip"],
            "latency_ms_per_second": prof["latency_ms"]["median"],
            "head_seconds": result["train_seconds"], "stage_seconds": stages,
            "wall_seconds": round(wall, 1), "epochs": result["epochs"]}


def table(rows: list[dict]) -> str:
    """The runs as a markdown table, grid order."""
    lines = ["| run | D | F | head | mask | test | valid | GFLOPs / s | latency / s | params |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    def key(r):
        m = r["model_args"]
        return (r["data"], m["compression"], m["codebook_size"], m["hidden"], m["head_dropout"],
                m["mask_prob"])
    for r in sorted(rows, key=key):
        m = r["model_args"]
        lines.append(f"| {r['run']} | {m['codebook_size']} | {m['compression']} | "
                     f"{m['hidden']}, {m['head_dropout']:g} | {m['mask_prob']:g} | "
                     f"{r['metric']} {100 * r['score']:.1f} | {100 * r['val_score']:.1f} | "
                     f"{r['gflops_per_second']:.3f} | {r['latency_ms_per_second']:.2f} ms | "
                     f"{r['params'] / 1e6:.1f} M |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("fsdd", "synth"), default="fsdd")
    p.add_argument("--sizes", default="16,64,256,1024", help="code-book sizes D")
    p.add_argument("--compression", default="10,20", help="compression factors F")
    p.add_argument("--heads", default="256:0.1,512:0.4",
                   help="head width:dropout pairs")
    p.add_argument("--masks", default="0.1,0.2,0.35,0.5",
                   help="mask probabilities tried on the best configuration")
    p.add_argument("--ae-hidden", type=int, default=512, help="autoencoder width (paper: 2048)")
    p.add_argument("--ae-steps", type=int, default=1500)
    p.add_argument("--ae-batch", type=int, default=256)
    p.add_argument("--chunks", type=int, default=20000)
    p.add_argument("--kmeans-epochs", type=int, default=3)
    p.add_argument("--views", type=int, default=8, help="histograms per training clip")
    p.add_argument("--gain-db", type=float, default=6.0, help="gain of the shifted copies")
    p.add_argument("--epochs", type=int, default=30, help="head epochs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--table", action="store_true", help="print the results as markdown")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(RESULTS.read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    spec = data_spec(a.data)
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    done: list[dict] = []

    def record(row: dict) -> None:
        nonlocal rows
        row.setdefault("matmul_gflops", matmul_gflops())  # the machine, right after the row
        rows = [r for r in rows if r["run"] != row["run"]] + [row]
        done.append(row)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"{row['run']:<34} {row['metric']} {row['score']:.4f} (valid {row['val_score']:.4f})"
              f"  {row['gflops_per_second']:.3f} GFLOPs/s  {row['latency_ms_per_second']:.2f} ms/s"
              f"  {row['params'] / 1e6:.1f} M  stages {row['stage_seconds']}  head "
              f"{row['head_seconds']:.0f} s", flush=True)

    runs_dir = HERE / "results" / "codebook-runs" / a.data
    heads = [(int(w), float(d)) for w, d in (h.split(":") for h in a.heads.split(","))]
    first_of: dict = {}  # earlier runs (of this call or before) whose stages can be reused
    for old in sorted(runs_dir.glob("F*-D*")):
        if (old / "stages" / "codebook.safetensors.json").is_file():
            f, size = (int(x[1:]) for x in old.name.split("-")[:2])
            first_of.setdefault((f, size), old)
            first_of.setdefault(f, old)
    for f in (int(x) for x in a.compression.split(",")):
        for size in (int(x) for x in a.sizes.split(",")):
            for width, dropout in heads:
                name = f"F{f}-D{size}-h{width}-d{dropout:g}-m0"
                src = first_of.get((f, size)) or first_of.get(f)
                args = dict(codebook_size=size, compression=f, hidden=width,
                            head_dropout=dropout, mask_prob=0.0, ae_hidden=a.ae_hidden)
                record(run_one(a, spec, name, args, src))
                first_of.setdefault((f, size), runs_dir / name)
                first_of.setdefault(f, runs_dir / name)
    best = max(done, key=lambda r: r["val_score"])
    for mask in (float(x) for x in a.masks.split(",") if float(x) > 0):
        args = dict(best["model_args"], mask_prob=mask)
        name = best["run"].split("/", 1)[1].rsplit("-m", 1)[0] + f"-m{mask:g}"
        record(run_one(a, spec, name, args, runs_dir / best["run"].split("/", 1)[1]))
    ref = transformer(a.data)
    chosen = max(done, key=lambda r: r["val_score"])
    summary = {"benchmark": "codebook", "data": a.data, "transformer": ref,
               "best_by_validation": chosen["run"], "best_score": chosen["score"],
               "gap_points": round(100 * (ref["score"] - chosen["score"]), 2),
               "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                           "platform": platform.platform()}}
    (HERE / "results" / f"codebook-{a.data}-summary.json").write_text(
        json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
