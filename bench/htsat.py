"""HTS-AT throughput: the paper-size model on 10 s clips, batch 4, fp32, on this machine.

    python bench/htsat.py [--reference DIR] [--rounds N]

Reports parameters, GFLOPs per clip, peak activation memory, clips per second, the
achieved GFLOP/s as a fraction of the machine's fp32 matmul rate (timed in the same run),
and the largest score difference between the inference path (``torch.inference_mode``:
window-order gathers, in-place blocks) and the eager autograd path on the same input.
With ``--reference DIR`` (a checkout of the official HTS-AT code, with torchlibrosa
importable), the official model is timed in the same run on the same input, alternating
with earmark round by round; the ratio is the median of the per-round ratios, since
absolute times drift on a shared machine and ratios much less.

To see how the figures hold on a machine without AVX-512, run it with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``: ATen's
kernels, oneDNN and MKL then use AVX2 code only. Writes bench/results/htsat.json (or
``--name``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from timing import alternate, round_ratios

import earmark
from earmark.profile import matmul_gflops, profile_model

HERE = Path(__file__).resolve().parent


def seconds_per_batch(fn, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of ``fn(x)`` over ``repeats`` calls, after one warm-up call."""
    with torch.inference_mode():
        fn(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def official_model(ref_dir: str):
    """The official HTSAT_Swin_Transformer with its default AudioSet configuration."""
    sys.path[:0] = [ref_dir]
    for name in ("h5py", "museval"):  # imported by its utils.py, unused for inference
        sys.modules.setdefault(name, types.ModuleType(name))
    import config  # the official config module
    from model.htsat import HTSAT_Swin_Transformer

    return HTSAT_Swin_Transformer(spec_size=256, patch_size=4, patch_stride=(4, 4),
                                  num_classes=527, embed_dim=96, depths=[2, 2, 6, 2],
                                  num_heads=[4, 8, 16, 32], window_size=8, config=config).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", default=None, help="official HTS-AT checkout")
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds (each times every model --repeats times)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--name", default="htsat", help="results file name in bench/results/")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = earmark.create_model("htsat", 527).eval()
    prof = profile_model(model, seconds=10.0, batch=a.batch, repeats=3)
    x = torch.randn(a.batch, 320000) * 0.1
    with torch.inference_mode():
        fast = torch.sigmoid(model(x))
    eager = torch.sigmoid(model(x)).detach()  # autograd on: the eager path
    difference = float((fast - eager).abs().max())

    candidates = {"earmark": model}
    if a.reference:
        ref = official_model(a.reference)
        candidates["official"] = lambda w: ref(w, infer_mode=True)
    measures = {"matmul": matmul_gflops}  # the machine's rate before every round
    measures.update({name: (lambda fn=fn: seconds_per_batch(fn, x, a.repeats))
                     for name, fn in candidates.items()})
    times = alternate(measures, a.rounds)
    rates = times.pop("matmul") + [matmul_gflops()]  # and after the last
    matmul = statistics.median(rates)
    ours = a.batch / statistics.median(times["earmark"])
    achieved = ours * prof["gflops_per_clip"]
    report = {"benchmark": "htsat", "batch": a.batch, "seconds": 10.0, "rounds": a.rounds,
              "params_m": prof["params"] / 1e6, "gflops_per_clip": prof["gflops_per_clip"],
              "peak_memory_mb": prof["peak_memory_mb"], "clips_per_second": ours,
              "achieved_gflops": achieved, "matmul_gflops": matmul,
              "matmul_gflops_samples": rates, "fraction_of_matmul": achieved / matmul,
              "max_score_difference_vs_eager": difference,
              "threads": torch.get_num_threads(), "cpu_capability":
              torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "platform": platform.platform()}
    if a.reference:
        ratios = round_ratios(times["official"], times["earmark"])
        report["official_clips_per_second"] = a.batch / statistics.median(times["official"])
        report["speedup_vs_official"] = statistics.median(ratios)
        report["speedup_per_round"] = ratios
    out = HERE / "results" / f"{a.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"params {report['params_m']:.1f} M   GFLOPs/clip {report['gflops_per_clip']:.2f}   "
          f"peak activations {report['peak_memory_mb']:.0f} MB   threads {report['threads']}   "
          f"{report['cpu_capability']}")
    print(f"earmark htsat            {ours:6.2f} clips/s = {achieved:.1f} GFLOP/s, "
          f"{100 * achieved / matmul:.1f} % of the matmul rate ({matmul:.1f} GFLOP/s)")
    print(f"scores, inference path against eager: max difference {difference:.2e}")
    if a.reference:
        print(f"official HTS-AT          {report['official_clips_per_second']:6.2f} clips/s")
        print(f"speed-up vs official     {report['speedup_vs_official']:6.2f}x "
              f"(per round {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
