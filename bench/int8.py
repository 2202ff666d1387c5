"""int8 ONNX against float ONNX: file size, speed in ONNX Runtime, scores and FSDD top-1.

    python bench/int8.py [--model bench/results/fsdd-robust-run/model] [--data DIR]

Exports ``--model`` (default: the robust FSDD model of ``bench/fsdd.py --name
fsdd-robust``) to float and to int8 ONNX (``earmark export --quantize int8``, calibration
clips from the FSDD recordings), and a random paper-size ``htsat`` (10 s at 32 kHz) the same
way for a model whose time is mostly matrix products. For each pair: both file sizes, the
int8 score difference the export stored, and the time of one ONNX Runtime call at 1 and 2
threads (batch 1 and 8; htsat: batch 1, 3 rounds), the two files taking turns for ``--rounds`` rounds (the ratio is
the median of the per-round ratios), with ONNX Runtime's own per-operator profile of the
float file (where the time goes). With FSDD data, ``earmark eval`` scores both FSDD files
on the official test split. The machine's fp32 matmul rate is timed in the same run.
Writes bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fsdd_speakers import machine_info  # noqa: E402
from timing import alternate, round_ratios  # noqa: E402

import earmark  # noqa: E402
from earmark.cli import main as cli  # noqa: E402
from earmark.files import write_json  # noqa: E402
from earmark.infer.onnx import onnx_metadata  # noqa: E402
from earmark.profile import matmul_gflops  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "fsdd"


def session(path: Path, threads: int, profile: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = profile
    if profile:
        opts.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def call_ms(sess, x: np.ndarray, calls: int) -> float:
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def speed(fp32: Path, int8: Path, samples: int, rounds: int, calls: int,
          batches: tuple[int, ...]) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for threads in (1, 2):
        sessions = {"fp32": session(fp32, threads), "int8": session(int8, threads)}
        for batch in batches:
            x = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
            ms = alternate({name: (lambda s=sess, x=x: call_ms(s, x, calls))
                            for name, sess in sessions.items()}, rounds)
            ratios = round_ratios(ms["fp32"], ms["int8"])
            out[f"threads{threads}_batch{batch}"] = {
                "fp32_ms": statistics.median(ms["fp32"]), "int8_ms": statistics.median(ms["int8"]),
                "speedup": statistics.median(ratios), "per_round": ratios}
    return out


def operator_profile(path: Path, samples: int, calls: int, batch: int) -> dict:
    """ONNX Runtime's own kernel times by operator type at 1 thread: share of the total."""
    sess = session(path, 1, profile=True)
    x = (0.1 * np.random.default_rng(0).standard_normal((batch, samples))).astype(np.float32)
    name = sess.get_inputs()[0].name
    for _ in range(calls):
        sess.run(None, {name: x})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return {op: round(us / total, 4) for op, us in by_op.most_common(8)}


def export_pair(model_dir: Path, folder: Path, data: str | None) -> tuple[Path, Path]:
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    if cli(["export", str(model_dir), str(fp32)]) != 0:
        raise SystemExit(f"{model_dir}: float export failed")
    extra = ["--data", data] if data else []
    if cli(["export", str(model_dir), str(int8), "--quantize", "int8", *extra]) != 0:
        raise SystemExit(f"{model_dir}: int8 export failed")
    return fp32, int8


def top1(path: Path, data: str) -> float | None:
    with tempfile.TemporaryDirectory() as out:
        if cli(["eval", str(path), "--data", data, "--out", out, "--no-progress"]) != 0:
            return None
        metrics = json.loads(Path(out, "metrics.json").read_text())
    return metrics.get("accuracy")


def compare(name: str, model_dir: Path, samples: int, data: str | None, rounds: int,
            calls: int, work: Path, batches: tuple[int, ...] = (1, 8)) -> dict:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = export_pair(model_dir, folder, data)
    row = {"fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
           "size_ratio": int8.stat().st_size / fp32.stat().st_size,
           "quantization": onnx_metadata(int8)["quantization"],
           "speed": speed(fp32, int8, samples, rounds, calls, batches),
           "fp32_operator_share": operator_profile(fp32, samples, calls, max(batches))}
    if data:
        row["fsdd_top1"] = {"fp32": top1(fp32, data), "int8": top1(int8, data)}
    print(name, json.dumps(row, indent=1), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(RESULTS / "fsdd-robust-run" / "model"))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="FSDD folder")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--no-htsat", action="store_true")
    a = p.parse_args(argv)
    from earmark.models.directory import save_model_dir

    report = {"machine": machine_info(torch.get_num_threads()), "rows": {}}
    data = f"fsdd:{a.data}" if Path(a.data).is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if Path(a.model, "config.json").is_file():
            tagger = earmark.load(a.model)
            samples = int(round(tagger.model.clip_seconds * tagger.sample_rate))
            report["rows"]["fsdd"] = compare("fsdd", Path(a.model), samples, data, a.rounds,
                                             a.calls, work)
        else:
            print(f"{a.model}: no model directory (python bench/fsdd.py --name fsdd-robust)")
        if not a.no_htsat:
            torch.manual_seed(0)
            model = earmark.create_model("htsat", 527).eval()
            model_dir = save_model_dir(model, work / "htsat-model", [str(i) for i in range(527)])
            report["rows"]["htsat"] = compare("htsat", model_dir, 320000, None, 3,
                                              max(3, a.calls // 4), work, batches=(1,))
    report["matmul_gflops_after"] = matmul_gflops()
    write_json(RESULTS / "int8.json", report)
    print(f"wrote {RESULTS / 'int8.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
