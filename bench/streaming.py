"""Streaming cost: per-chunk latency, memory and FLOPs of SAT against a sliding-window ViT.

    python bench/streaming.py [--reference DIR] [--chunks 60] [--threads 1]

For ``sat-tiny`` at 1 s and 2 s chunks: median and p95 latency of one chunk (front end
included, cache primed with silence, as a stream runs), GFLOPs per chunk and peak
activation memory, for the eager model, the default chunk step (traced, frozen, optimised
for inference: what ``earmark stream`` runs), the compiled one (``--compile``) and ONNX
Runtime; and the cost of re-running a full-context ``vit-tiny`` over a sliding 10 s window
for every chunk (paper 003, table 2), as a ratio. Threads: ``--threads`` (default 1, as
``earmark stream``).

With ``--reference DIR`` (a checkout of the SAT code with einops and loguru importable) the
official streaming model is timed in the same run, alternating with the default step round
by round, and the ratio is the median of the per-round ratios; torchaudio cannot be
installed beside this torch, so its front end runs on a stand-in with torchaudio's
conventions written here. The 2 s step's 48 linear layers alone (oneDNN, pre-packed) give
the floor any fp32 step of this model can reach here.

Busy machine: the default 2 s step timed again while another process runs 2-thread fp32
matmuls on every core, against the same step quiet (p95 ratio). The machine's matmul rate
is timed in the same run. Writes bench/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from timing import alternate, round_ratios
from torch import nn

import earmark
from earmark.profile import _count_flops, _cpu_peak_bytes, matmul_gflops

HERE = Path(__file__).resolve().parent
SR = 16000


def timed(step, chunks: int) -> dict:
    """Median and p95 of ``step()`` in milliseconds over ``chunks`` calls after 5 warm-ups."""
    with torch.inference_mode():
        for _ in range(5):
            step()
        times = []
        for _ in range(chunks):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}


def default_step(chunk: float, compile: bool = False):
    """``step()`` running one chunk through sat-tiny's traced (or compiled) chunk step."""
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 527, chunk_seconds=chunk).eval()
    wave = torch.randn(1, int(chunk * SR)) * 0.1
    state = {"cache": model.prime_cache(1)}
    fast = model.traced_chunk_step(wave, state["cache"], compile=compile)

    def step():
        _, state["cache"] = fast(wave, state["cache"])

    return step


def sat_traced(chunk: float, chunks: int, compile: bool = False) -> dict:
    return timed(default_step(chunk, compile), chunks)


def linear_floor(chunk: float, chunks: int) -> dict:
    """Only the linear layers of one chunk step (qkv, projection, MLP of every block, on one
    chunk's tokens), traced and optimised as the default step: a floor for its time."""
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 527, chunk_seconds=chunk).eval()
    d = model.embed_dim

    class Linears(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = model.blocks

        def forward(self, x):
            for blk in self.blocks:
                x = blk.attn.proj(blk.attn.qkv(x)[:, :d])
                x = blk.mlp.fc2(blk.mlp.fc1(x))
            return x

    tokens = torch.randn(model.cache_tokens, d)
    with torch.no_grad():
        run = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            Linears().eval(), (tokens,))))
    result = timed(lambda: run(tokens), chunks)
    result["tokens"] = model.cache_tokens
    return result


def busy_machine(chunk: float, chunks: int, seconds: float = 120.0) -> dict:
    """The default step's latency while another process runs 2-thread matmuls."""
    step = default_step(chunk)
    quiet = timed(step, chunks)
    code = ("import time, torch; torch.set_num_threads(2); a = torch.randn(1024, 1024); "
            f"end = time.time() + {seconds}\nwhile time.time() < end: a @ a")
    competitor = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(2.0)  # let it start multiplying
        busy = timed(step, chunks)
    finally:
        competitor.kill()
        competitor.wait()
    return {"quiet": quiet, "busy": busy, "p95_ratio": busy["p95_ms"] / quiet["p95_ms"],
            "threads": torch.get_num_threads(), "competitor": "2-thread 1024x1024 fp32 matmuls"}


def sat_eager(chunk: float, chunks: int) -> dict:
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 527, chunk_seconds=chunk).eval()
    wave = torch.randn(1, int(chunk * SR)) * 0.1
    state = {"cache": model.prime_cache(1)}

    def step():
        _, state["cache"] = model.forward_chunk(wave, state["cache"])

    result = timed(step, chunks)
    cache = model.prime_cache(1)
    one_chunk = _Call(lambda w: model.forward_chunk(w, cache))
    result["gflops_per_chunk"] = _count_flops(one_chunk, wave) / 1e9
    peak = _cpu_peak_bytes(one_chunk, wave)
    result["peak_activation_mb"] = None if peak is None else peak / 2**20
    result["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return result


class _Call(nn.Module):
    """Lets the profiler helpers, which call ``model(wave)``, measure any callable."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, wave):
        return self.fn(wave)


def sat_onnx(chunk: float, chunks: int) -> dict | None:
    try:
        from earmark.export import export_onnx
        from earmark.infer.tagger import load_onnx
    except ImportError:
        return None
    torch.manual_seed(0)
    model = earmark.create_model("sat-tiny", 527, chunk_seconds=chunk).eval()
    from earmark.models.convert import audioset_labels
    from earmark.models.directory import save_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model_dir(model, Path(tmp) / "m", audioset_labels())
        path = export_onnx(model_dir, Path(tmp) / "sat.onnx")
        onnx_model = load_onnx(path).model
        wave = torch.randn(1, int(chunk * SR)) * 0.1
        state = {"cache": onnx_model.prime_cache(1)}

        def step():
            _, state["cache"] = onnx_model.forward_chunk(wave, state["cache"])

        return timed(step, chunks)


def sliding_vit(chunks: int) -> dict:
    torch.manual_seed(0)
    model = earmark.create_model("vit-tiny", 527).eval()
    window = torch.randn(1, 10 * SR) * 0.1
    result = timed(lambda: model(window), max(10, chunks // 3))
    result["gflops_per_chunk"] = _count_flops(model, window) / 1e9
    return result


def official_sat(ref_dir: str, chunk: float, chunks: int) -> dict:
    return timed(official_step(ref_dir, chunk), chunks)


def official_step(ref_dir: str, chunk: float):
    import librosa

    class MelSpectrogram(nn.Module):  # torchaudio's conventions: HTK mel, no norm, power 2
        def __init__(self, sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels,
                     center=True):
            super().__init__()
            self.args = (n_fft, hop_length, win_length)
            self.register_buffer("window", torch.hann_window(win_length))
            fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
                                     fmax=f_max, htk=True, norm=None)
            self.register_buffer("fb", torch.tensor(fb, dtype=torch.float32))

        def forward(self, x):
            n_fft, hop, win = self.args
            spec = torch.stft(x, n_fft, hop, win, self.window, center=True, pad_mode="reflect",
                              return_complex=True).abs() ** 2
            return self.fb @ spec

    class AmplitudeToDB(nn.Module):
        def __init__(self, top_db=None):
            super().__init__()
            self.top_db = top_db

        def forward(self, x):
            db = 10 * torch.log10(torch.clamp(x, min=1e-10))
            return torch.max(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db)

    audio = types.ModuleType("torchaudio")
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.MelSpectrogram, transforms.AmplitudeToDB = MelSpectrogram, AmplitudeToDB
    audio.transforms = transforms
    sys.modules.setdefault("torchaudio", audio)
    sys.modules.setdefault("torchaudio.transforms", transforms)
    sys.path.insert(0, ref_dir)
    from models.audiotransformer import Streaming_AudioTransformer

    torch.manual_seed(0)
    frames = 192 if chunk == 2.0 else 96
    model = Streaming_AudioTransformer(outputdim=527, patch_size=16, embed_dim=192, depth=12,
                                       num_heads=3, init_bn=True, mlp_ratio=4,
                                       target_length=frames, cache_length=frames).eval()
    wave = torch.randn(1, int(chunk * SR)) * 0.1
    with torch.inference_mode():
        *_, cache = model(torch.zeros(1, int(frames / 100 * SR)), return_cache=True)
    state = {"cache": cache}

    def step():
        _, state["cache"] = model(wave, cache=state["cache"], return_cache=True)

    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=60)
    p.add_argument("--rounds", type=int, default=5,
                   help="alternating rounds of the default step and the official one")
    p.add_argument("--threads", type=int, default=1, help="torch threads (earmark stream: 1)")
    p.add_argument("--reference", default=None, help="checkout of the official SAT code")
    p.add_argument("--no-busy", action="store_true", help="skip the busy-machine case")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    report = {"benchmark": "streaming", "threads": torch.get_num_threads(),
              "matmul_gflops": matmul_gflops(), "torch": torch.__version__,
              "platform": platform.platform(), "rows": {}}
    rows = report["rows"]
    for chunk in (2.0, 1.0):
        rows[f"sat-tiny {chunk:.0f} s eager"] = sat_eager(chunk, a.chunks)
        rows[f"sat-tiny {chunk:.0f} s default step"] = sat_traced(chunk, a.chunks)
        rows[f"sat-tiny {chunk:.0f} s compiled"] = sat_traced(chunk, a.chunks, compile=True)
        onnx = sat_onnx(chunk, a.chunks)
        if onnx:
            rows[f"sat-tiny {chunk:.0f} s onnxruntime"] = onnx
        if a.reference:
            rows[f"official SAT-T {chunk:.0f} s"] = official_sat(a.reference, chunk, a.chunks)
    rows["sat-tiny 2 s linear layers only"] = linear_floor(2.0, a.chunks)
    rows["vit-tiny 10 s sliding window"] = sliding_vit(a.chunks)
    vit = rows["vit-tiny 10 s sliding window"]
    for chunk in (2.0, 1.0):
        sat = rows[f"sat-tiny {chunk:.0f} s eager"]
        report[f"sliding_vit_over_sat_{chunk:.0f}s_latency"] = vit["median_ms"] / sat["median_ms"]
        report[f"sliding_vit_over_sat_{chunk:.0f}s_flops"] = (vit["gflops_per_chunk"]
                                                              / sat["gflops_per_chunk"])
    if a.reference:
        steps = {"default": default_step(2.0), "official": official_step(a.reference, 2.0)}
        per_round = alternate({name: (lambda s=step: timed(s, a.chunks)["median_ms"])
                               for name, step in steps.items()}, a.rounds)
        ratios = round_ratios(per_round["official"], per_round["default"])
        report["speedup_vs_official_2s"] = {
            "median": statistics.median(ratios), "per_round": ratios,
            "default_ms": per_round["default"], "official_ms": per_round["official"],
            "floor_ratio": (statistics.median(per_round["official"])
                            / rows["sat-tiny 2 s linear layers only"]["median_ms"])}
    if not a.no_busy:
        report["busy_machine_2s"] = busy_machine(2.0, a.chunks)
    report["matmul_gflops_after"] = matmul_gflops()
    out = HERE / "results" / "streaming.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"threads {report['threads']}, matmul {report['matmul_gflops']:.1f} GFLOP/s before, "
          f"{report['matmul_gflops_after']:.1f} after")
    print(f"{'':<34}{'median ms':>10}{'p95 ms':>9}{'GFLOPs':>9}{'peak MB':>9}")
    for name, r in rows.items():
        gf = r.get("gflops_per_chunk")
        mb = r.get("peak_activation_mb")
        print(f"{name:<34}{r['median_ms']:>10.2f}{r['p95_ms']:>9.2f}"
              f"{'' if gf is None else f'{gf:.3f}':>9}{'' if mb is None else f'{mb:.1f}':>9}")
    for chunk in (2, 1):
        print(f"sliding 10 s ViT-T / SAT-T at {chunk} s: "
              f"{report[f'sliding_vit_over_sat_{chunk}s_latency']:.1f}x latency, "
              f"{report[f'sliding_vit_over_sat_{chunk}s_flops']:.1f}x FLOPs")
    if "speedup_vs_official_2s" in report:
        r = report["speedup_vs_official_2s"]
        print(f"default 2 s step against the official step, alternating: {r['median']:.2f}x "
              f"(rounds {min(r['per_round']):.2f}-{max(r['per_round']):.2f}); the linear "
              f"layers alone would be {r['floor_ratio']:.2f}x")
    if "busy_machine_2s" in report:
        b = report["busy_machine_2s"]
        print(f"busy machine, default 2 s step: p95 {b['busy']['p95_ms']:.2f} ms against "
              f"{b['quiet']['p95_ms']:.2f} ms quiet ({b['p95_ratio']:.2f}x)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
