"""Cost of a model's forward pass: parameters, FLOPs, peak memory, latency, real-time factor.

The engine behind ``earmark profile``. Any earmark model works: an ``nn.Module`` with
``sample_rate``, ``clip_seconds`` and ``forward(wave (B, N)) -> logits (B, C)``.

    >>> import earmark
    >>> from earmark.profile import profile_model, format_profile
    >>> model = earmark.create_model("vit-tiny", num_classes=10, depth=1)
    >>> result = profile_model(model, seconds=1.0, repeats=3)
    >>> result["params"], result["gflops_per_clip"], result["output_shape"]
    (509898, 0.027361664, [1, 10])

What is measured, and what is not:

* ``flops``: ``torch.utils.flop_counter.FlopCounterMode`` over one eval-mode forward under
  ``torch.inference_mode``; 2 FLOPs per multiply-add of matrix products, convolutions and
  attention. Element-wise ops, norms, softmax and the STFT are not counted (the
  convention of the papers' FLOP tables). PyTorch's counter lacks the CPU kernel of
  ``scaled_dot_product_attention``; a formula for it is added here so attention costs the
  same on CPU as on CUDA.
* ``peak_memory_mb``: the peak of memory allocated *during* the forward pass above what
  was allocated before it (activations, workspaces, the output), on either device. On
  CUDA from ``torch.cuda.max_memory_allocated``; on CPU by replaying the allocation and
  free events that ``torch.profiler`` (``profile_memory=True``) records from PyTorch's CPU
  allocator, which misses memory that libraries such as oneDNN allocate on their own.
  Weights and input are reported separately (``model_memory_mb``, ``input_memory_mb``).
* ``latency_ms``: wall time of one forward of the whole batch, ``repeats`` runs after
  ``warmup`` untimed ones; CUDA is synchronised around each run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from earmark.errors import ModelError
from earmark.quiet import native_stderr_silenced

__all__ = ["format_profile", "profile_model"]


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FLOPs of softmax(q k^T) v for ``aten._scaled_dot_product_flash_attention_for_cpu``."""
    # query (B, heads, L, E), key (B, heads, S, E), value (B, heads, S, Ev):
    # q k^T is B*heads*L*S*E multiply-adds, attn @ v is B*heads*L*S*Ev.
    *batch, length, embed = query_shape
    source = key_shape[-2]
    value_embed = value_shape[-1]
    batch_heads = math.prod(batch)
    return 2 * batch_heads * length * source * (embed + value_embed)


def _extra_flop_formulas() -> dict:
    ops = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        ops[cpu_sdpa] = _cpu_attention_flops
    return ops


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _first_device(model: nn.Module) -> torch.device | None:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def _count_flops(model: nn.Module, wave: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas())
    with torch.inference_mode(), counter:
        model(wave)
    return int(counter.get_total_flops())


def _profiled_forward(model: nn.Module, wave: torch.Tensor, **options):
    """One inference forward under torch.profiler (CPU activity, ``options`` passed on), its
    native chatter silenced; None for builds without kineto or with a profiler already
    running (the figure is then "not measured")."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    recorder = torch_profile(activities=[ProfilerActivity.CPU], **options)
    try:
        with native_stderr_silenced(), torch.inference_mode(), recorder as prof:
            model(wave)
    except RuntimeError:
        return None
    return prof


def _cpu_peak_bytes(model: nn.Module, wave: torch.Tensor) -> int | None:
    """Peak of (allocated - freed) bytes over one forward, from the profiler's memory events."""
    prof = _profiled_forward(model, wave, profile_memory=True)
    if prof is None:
        return None
    # The raw kineto events keep each allocation and free in time order; the aggregated
    # FunctionEvents fold them into per-op net sums, which hides the peak inside an op.
    results = getattr(prof.profiler, "kineto_results", None) if prof.profiler else None
    if results is None:
        return None
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    if not events:
        return 0
    running = np.cumsum([nbytes for _, nbytes in events])
    return int(max(0, running.max()))


def _operator_times(model: nn.Module, wave: torch.Tensor, top: int) -> list[dict] | None:
    """The ``top`` operators by self CPU time over one forward (torch.profiler): name, calls,
    milliseconds and share of all operators' self time; None where it cannot be recorded."""
    prof = _profiled_forward(model, wave)
    if prof is None:
        return None
    rows = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    rows.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"name": e.key, "calls": int(e.count), "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in rows[:top]]


def _cuda_peak_bytes(model: nn.Module, wave: torch.Tensor, device: torch.device) -> int:
    _synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        model(wave)
    _synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def profile_model(model: nn.Module, seconds: float | None = None, batch: int = 1,
                  repeats: int = 20, warmup: int = 3, device: str | torch.device = "cpu",
                  threads: int | None = None, operators: int = 0) -> dict[str, Any]:
    """Measure one model on ``batch`` random waveforms of ``seconds`` (default: its clip).

    Returns a JSON-serialisable dict: ``model`` (class name), ``params``,
    ``trainable_params``, ``flops`` (per batch), ``gflops_per_clip``, ``peak_memory_mb``
    (activation peak of one forward; ``None`` where it cannot be measured),
    ``model_memory_mb``, ``input_memory_mb``, ``latency_ms`` (``median``, ``p95``, ``mean``,
    ``min`` over ``repeats`` timed forwards of the batch), ``real_time_factor`` (median
    latency / audio seconds in the batch; below 1 is faster than real time),
    ``achieved_gflops`` (FLOPs over the median latency), ``matmul_gflops`` (the machine's fp32
    matmul rate at the same threads, timed in the same call) and ``fraction_of_matmul``, and
    the input: ``seconds``, ``batch``, ``num_samples``, ``sample_rate``, ``device``,
    ``threads``, ``torch_version``, ``output_shape``. With ``operators`` N > 0, also
    ``operators``: where one forward's time goes, the N operators with the most self CPU
    time (``name``, ``calls``, ``self_ms``, ``share`` of all operators' self time).

    The model is moved to ``device`` and put in eval mode for the measurement, then
    returned to its original device and mode. ``threads`` sets ``torch.set_num_threads``
    for the duration of the call.

        >>> import earmark
        >>> model = earmark.create_model("vit-tiny", num_classes=10, depth=1)
        >>> result = profile_model(model, seconds=2.0, batch=4, repeats=3)
        >>> result["gflops_per_clip"], result["batch"], result["output_shape"]
        (0.055571328, 4, [4, 10])
        >>> result["latency_ms"]["median"] > 0
        True
    """
    for attribute in ("sample_rate", "clip_seconds"):
        if not hasattr(model, attribute):
            raise ModelError(f"{type(model).__name__} has no `{attribute}`: profile_model "
                             "needs an earmark model (sample_rate, clip_seconds, "
                             "forward(wave (B, N)))")
    sample_rate = int(model.sample_rate)
    seconds = float(model.clip_seconds if seconds is None else seconds)
    if seconds <= 0 or batch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need seconds > 0, batch >= 1, repeats >= 1, warmup >= 0; got "
                         f"seconds={seconds}, batch={batch}, repeats={repeats}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    device = torch.device(device)
    num_samples = max(1, round(seconds * sample_rate))

    was_training = model.training
    home = _first_device(model)
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.to(device).eval()
        generator = torch.Generator().manual_seed(0)
        # Quiet noise rather than zeros: some front ends take a cheaper path on silence.
        wave = (0.1 * torch.randn(batch, num_samples, generator=generator)).to(device)

        flops = _count_flops(model, wave)
        with torch.inference_mode():
            output = model(wave)
            for _ in range(warmup):
                model(wave)
        peak = (_cuda_peak_bytes(model, wave, device) if device.type == "cuda"
                else _cpu_peak_bytes(model, wave) if device.type == "cpu" else None)

        times = []
        with torch.inference_mode():
            for _ in range(repeats):
                _synchronize(device)
                start = time.perf_counter()
                model(wave)
                _synchronize(device)
                times.append(time.perf_counter() - start)
        measured_threads = torch.get_num_threads()
        ceiling = matmul_gflops(device)  # the machine's own rate, same threads, same run
        by_operator = _operator_times(model, wave, operators) if operators > 0 else None
    finally:
        torch.set_num_threads(previous_threads)
        if home is not None:
            model.to(home)
        model.train(was_training)

    times_ms = np.asarray(times) * 1e3
    median_ms = float(np.median(times_ms))
    achieved = flops / (median_ms / 1e3) / 1e9
    params = list(model.parameters())
    megabyte = 1024.0 ** 2
    return {
        "model": type(model).__name__,
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "flops": flops,
        "gflops_per_clip": flops / batch / 1e9,
        "peak_memory_mb": None if peak is None else peak / megabyte,
        "model_memory_mb": _tensor_bytes([*params, *model.buffers()]) / megabyte,
        "input_memory_mb": _tensor_bytes([wave]) / megabyte,
        "latency_ms": {
            "median": median_ms,
            "p95": float(np.percentile(times_ms, 95)),
            "mean": float(times_ms.mean()),
            "min": float(times_ms.min()),
        },
        "real_time_factor": median_ms / 1e3 / (seconds * batch),
        "achieved_gflops": achieved,
        "matmul_gflops": ceiling,
        "fraction_of_matmul": achieved / ceiling,
        "seconds": seconds,
        "batch": batch,
        "num_samples": num_samples,
        "sample_rate": sample_rate,
        "device": str(device),
        "threads": measured_threads,
        "repeats": repeats,
        "warmup": warmup,
        "torch_version": torch.__version__,
        "output_shape": list(output.shape) if isinstance(output, torch.Tensor) else None,
        **({"operators": by_operator} if operators > 0 else {}),
    }


def matmul_gflops(device: str | torch.device = "cpu", n: int = 1024, repeats: int = 7) -> float:
    """The machine's fp32 matmul rate in GFLOP/s (median of ``repeats`` n x n products at the
    current thread count): the ceiling a model's achieved rate is measured against, taken in
    the same run because shared machines drift."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            _synchronize(device)
            start = time.perf_counter()
            a @ b
            _synchronize(device)
            if i >= 2:  # two warm-up products
                times.append(time.perf_counter() - start)
    return 2 * n ** 3 / float(np.median(times)) / 1e9


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def _real_time(rtf: float | None) -> str:
    if rtf is None:
        return "-"
    if rtf <= 0:
        return f"{rtf:.4g}"
    speed = "faster" if rtf < 1 else "slower"
    ratio = 1 / rtf if rtf < 1 else rtf
    return f"{rtf:.4g} ({ratio:.1f}x {speed} than real time)"


def _megabytes(mb: float) -> str:
    if mb >= 1024:
        return f"{mb / 1024:.2f} GB"
    return f"{mb:.2f} MB" if mb >= 1 else f"{mb * 1024:.1f} kB"


def format_profile(result: dict[str, Any]) -> str:
    """Readable two-column table of what :func:`profile_model` returns.

        >>> import earmark
        >>> model = earmark.create_model("vit-tiny", num_classes=10, depth=1)
        >>> print(format_profile(profile_model(model, seconds=1.0, repeats=3)))
        ... # doctest: +ELLIPSIS
        model             AudioViT
        input             1 x 1.00 s @ 16000 Hz (cpu, ... threads, torch ...)
        parameters        509.90 k (509.90 k trainable)
        FLOPs per batch   27.36 M
        ...
    """
    latency = result.get("latency_ms", {})
    peak = result.get("peak_memory_mb")
    rtf = result.get("real_time_factor")
    setting = (f"{result.get('batch')} x {result.get('seconds', 0):.2f} s @ "
               f"{result.get('sample_rate')} Hz ({result.get('device')}, "
               f"{result.get('threads')} threads, torch {result.get('torch_version')})")
    params = (f"{_count(result.get('params', 0))} "
              f"({_count(result.get('trainable_params', 0))} trainable)")
    rows = [
        ("model", str(result.get("model", "?"))),
        ("input", setting),
        ("parameters", params),
        ("FLOPs per batch", _count(result.get("flops", 0))),
        ("GFLOPs per clip", f"{result.get('gflops_per_clip', 0):.4g}"),
        ("model memory", _megabytes(result.get("model_memory_mb", 0))),
        ("peak activations", "not measured" if peak is None else _megabytes(peak)),
        ("latency median", f"{latency.get('median', 0):.2f} ms"),
        ("latency p95", f"{latency.get('p95', 0):.2f} ms"),
        ("real-time factor", _real_time(rtf)),
    ]
    if result.get("matmul_gflops"):
        rows.append(("achieved", f"{result['achieved_gflops']:.1f} GFLOP/s, "
                                 f"{100 * result['fraction_of_matmul']:.1f} % of this machine's "
                                 f"fp32 matmul ({result['matmul_gflops']:.1f} GFLOP/s, same "
                                 "threads)"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if "operators" in result:
        ops = result["operators"]
        if ops is None:
            lines.append(f"{'operators':<{width}}  not recorded (torch.profiler unavailable)")
        else:
            lines.append(f"\n{'operator (self CPU time of one forward)':<54} calls      ms  share")
            lines += [f"{o['name'][:54]:<54} {o['calls']:>5} {o['self_ms']:>7.2f} "
                      f"{100 * o['share']:>5.1f} %" for o in ops]
    return "\n".join(lines)
