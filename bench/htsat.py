"""HTS-AT throughput: the paper-size model on 10 s clips, batch 4, fp32, on this machine.

    python bench/htsat.py [--reference DIR] [--repeats N]

Reports parameters, GFLOPs per clip, peak activation memory and clips per second (median
over repeats). With ``--reference DIR`` (a checkout of the official HTS-AT code, with
torchlibrosa importable), the official model is timed in the same run on the same input
and the ratio is reported: absolute times drift on a shared machine, ratios much less.
Writes bench/results/htsat.json.
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

import earmark
from earmark.profile import profile_model

HERE = Path(__file__).resolve().parent


def clips_per_second(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        fn(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


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
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = earmark.create_model("htsat", 527).eval()
    prof = profile_model(model, seconds=10.0, batch=a.batch, repeats=3)
    x = torch.randn(a.batch, 320000) * 0.1
    ours = clips_per_second(model, x, a.repeats)
    report = {"benchmark": "htsat", "batch": a.batch, "seconds": 10.0,
              "params_m": prof["params"] / 1e6, "gflops_per_clip": prof["gflops_per_clip"],
              "peak_memory_mb": prof["peak_memory_mb"], "clips_per_second": ours,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "platform": platform.platform()}
    rows = [("earmark htsat", ours)]
    if a.reference:
        ref = official_model(a.reference)
        theirs = clips_per_second(lambda w: ref(w, infer_mode=True), x, a.repeats)
        ours_again = clips_per_second(model, x, a.repeats)  # interleaved, against drift
        report["official_clips_per_second"] = theirs
        report["clips_per_second_second_run"] = ours_again
        report["speedup_vs_official"] = statistics.fmean([ours, ours_again]) / theirs
        rows += [("official HTS-AT", theirs), ("earmark htsat (again)", ours_again)]
    out = HERE / "results" / "htsat.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"params {report['params_m']:.1f} M   GFLOPs/clip {report['gflops_per_clip']:.2f}   "
          f"peak activations {report['peak_memory_mb']:.0f} MB   threads {report['threads']}")
    for name, cps in rows:
        print(f"{name:<24} {cps:6.2f} clips/s")
    if "speedup_vs_official" in report:
        print(f"{'speed-up vs official':<24} {report['speedup_vs_official']:6.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
