"""ONNX export of earmark models, checked against PyTorch (:mod:`earmark.infer.onnx` runs
the files).

    >>> import earmark
    >>> from earmark.export import export_onnx
    >>> from earmark.infer.tagger import load_onnx
    >>> from earmark.models.directory import save_model_dir
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> model_dir = save_model_dir(model, "esc50/model", ["dog", "rooster", "rain"])
    >>> export_onnx(model_dir, "esc50.onnx", chunk_seconds=1.0)
    PosixPath('esc50.onnx')
    >>> sorted(label for label, _ in load_onnx("esc50.onnx").tag("dog.wav", top_k=3))
    ['dog', 'rain', 'rooster']

What the file holds
-------------------
The whole model, front end included: ``torch.stft``, the mel filter bank and the log
compression are in the graph (ONNX opset 18, ``STFT`` op), so a runtime feeds raw samples
at ``sample_rate`` and needs nothing from earmark. Graphs come from the dynamo-based
exporter (``torch.export`` then ``torch.onnx.export``): the TorchScript-based exporter
(``dynamo=False``) refuses the complex output of ``torch.stft`` ("STFT does not currently
support complex types"). When the exporter's own decompositions fail on an operator (HTS-AT's
masked attention), the graph is decomposed with torch's default table first and exported again.

Two kinds of graph, named in the metadata (``earmark.export["kind"]``):

- ``"clip"`` (ViT, HTS-AT and other full-context models): input ``wave`` (batch, samples)
  float32, output ``logits`` (batch, classes). The batch is dynamic. For the audio ViT the
  length is dynamic too, within what one traced graph covers (two time patches up to one
  fewer time patch than there are time position embeddings: 0.31 s to 10.07 s for the
  released ViTs, so a 10 s clip is one pass): ``min_samples`` and ``max_samples``. Other models (HTS-AT) branch on the input length in Python, so their
  graph takes exactly ``clip_seconds`` of audio (``min_samples == max_samples``);
  ``chunk_seconds`` fixes the length of any model's graph.
- ``"stream"`` (SAT): one chunk per call with the cache as explicit inputs and outputs:
  inputs ``wave`` (1, chunk_samples), ``cache_h0`` (1, M, D), ``cache_keys`` and
  ``cache_values`` (L-1, 1, heads, M, head_dim); outputs ``logits``, ``next_h0``,
  ``next_keys``, ``next_values`` of the same shapes. M is ``model.cache_tokens``: the
  shapes are static because a stream starts from the primed cache (the model's
  :meth:`prime_cache`, a chunk of silence), which is stored in the file's metadata under
  ``earmark.primed_cache`` (JSON: per tensor its shape, dtype and base64 little-endian
  bytes), so a runtime with onnxruntime alone can start a stream.

Metadata (``metadata_props``, all JSON strings): ``earmark.config`` is the model
directory's config.json (name, family, labels, sample rate, front end, args, ...);
``earmark.export`` the graph's contract (kind, sample counts, opset, versions);
``earmark.check`` the largest absolute difference to PyTorch found by the check
(``max_abs_diff``, ``atol``) when ``check=True``. :func:`earmark.infer.onnx.onnx_metadata`
reads them back.

:class:`~earmark.infer.onnx.OnnxModel` runs a file with onnxruntime behind the small part of
the AudioModel API the :class:`~earmark.infer.tagger.Tagger` uses; where it cannot be exact
it says so:

- clip graphs: an input longer than ``max_samples`` is scored as windows of
  ``window_samples`` (the ViT's own piece length, else the graph length; the last window
  ends at the end of the input) whose scores are averaged. This follows the PyTorch split
  rule, which splits the spectrogram rather than the waveform, closely but not exactly.
  Inputs shorter than ``min_samples`` raise :class:`~earmark.errors.ModelError`.
- stream graphs: every call starts from the primed cache unless a cache is passed (PyTorch
  ``model(wave)`` starts from an empty one, which has no static shape), and a wave is
  processed as consecutive ``chunk_samples`` chunks through the cache with their scores
  averaged; a shorter tail is dropped, as SAT drops a short last piece, unless it is the
  only chunk, which is zero-padded.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from earmark.errors import ModelError
from earmark.files import atomic_path
from earmark.infer.onnx import (
    META_CACHE,
    META_CHECK,
    META_CONFIG,
    META_EXPORT,
    META_QUANT,
    PROVIDERS,
    STREAM_INPUTS,
    STREAM_OUTPUTS,
    first_line,
    open_session,
    run_session,
)
from earmark.infer.tagger import default_chunk_seconds
from earmark.models.base import AudioModel
from earmark.models.sat import ChunkStep, StreamingAudioViT
from earmark.models.vit import AudioViT

__all__ = ["OPSET", "check_onnx", "export_onnx"]

OPSET = 18  # STFT exists from opset 17
FORMAT_VERSION = 1
log = logging.getLogger(__name__)


# ---- export -------------------------------------------------------------------------------


def export_onnx(model_or_dir, out_path: str | Path, chunk_seconds: float | None = None,
                check: bool = True, atol: float = 1e-4, labels: list[str] | None = None,
                quantize: str | None = None, clips: list[torch.Tensor] | None = None
                ) -> Path:
    """Export a model to a self-describing ONNX file, written atomically; returns its path.

    ``model_or_dir`` is a model directory, a run directory, a training checkpoint, a
    :class:`~earmark.infer.tagger.Tagger` or a model built by ``earmark.create_model``
    (then ``labels`` names its outputs; by default "0", "1", ...). ``chunk_seconds`` is the
    audio per call of a streaming model (default: its own chunk) and fixes the input length
    of a full-context model (default: dynamic where the model allows it). With ``check``,
    onnxruntime and PyTorch score the same random audio (a streaming model over three
    chunks, threading each one's cache) and any output differing by more than ``atol``
    raises :class:`~earmark.errors.ModelError`, leaving no file; the largest difference is
    stored in the file's ``earmark.check`` metadata.

        >>> import earmark
        >>> from earmark.infer.onnx import onnx_metadata
        >>> sat = earmark.create_model("sat-tiny", 3, depth=1, embed_dim=48, num_heads=3,
        ...                            chunk_seconds=1.0)
        >>> export_onnx(sat, "sat.onnx", labels=["dog", "rain", "siren"])
        PosixPath('sat.onnx')
        >>> meta = onnx_metadata("sat.onnx")
        >>> meta["export"]["chunk_seconds"], meta["check"]["max_abs_diff"] < 1e-4
        (1.0, True)

    ``quantize="int8"``: the checked float graph's matrix products get int8 weights (ONNX
    Runtime's dynamic quantisation; activations, the front end and a streaming model's
    cache stay float). The scores of the int8 file are compared with PyTorch's float scores
    on ``clips`` (waveforms at the model's rate; default: 16 seeded noise clips) and the
    largest difference and the top-1 agreement are stored in ``earmark.quantization``.
    """
    import onnx

    if quantize not in (None, "int8"):
        raise ModelError(f"quantize must be None or 'int8', got {quantize!r}")

    out_path = Path(out_path)
    model, config = _resolve(model_or_dir, labels)
    name = config.get("name", type(model).__name__)
    if chunk_seconds is not None and chunk_seconds <= 0:
        raise ModelError(f"{name}: chunk_seconds must be positive, got {chunk_seconds}")
    if model.is_streaming:
        proto, info, cache = _export_stream(model, name, chunk_seconds)
    else:
        (proto, info), cache = _export_clip(model, name, chunk_seconds), None
    info.update(format_version=FORMAT_VERSION, opset=OPSET, torch=torch.__version__)
    meta = {META_CONFIG: config, META_EXPORT: info}
    if cache is not None:
        meta[META_CACHE] = {k: _encode(v) for k, v in cache.items()}
    _set_metadata(proto, meta)
    proto.producer_name = "earmark"
    proto.doc_string = f"earmark {name}: {len(config['labels'])} labels at {model.sample_rate} Hz"
    if check:
        diff = check_onnx(model, proto.SerializeToString(), atol=atol)
        _set_metadata(proto, {META_CHECK: {"max_abs_diff": diff, "atol": atol,
                                           "provider": PROVIDERS[0]}})
    if quantize == "int8":
        proto = _quantize_int8(proto)
        _set_metadata(proto, {META_QUANT: {"kind": "int8 dynamic (MatMul/Gemm weights; "
                                                   "Conv weights stored int8, run in float)",
                                           **score_difference(model, proto, clips)}})
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))
    return out_path


def _quantize_int8(proto):
    """ONNX Runtime's dynamic int8 quantisation of a model proto (through files: the API
    takes paths); the metadata goes along."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder, "fp32.onnx"), Path(folder, "int8.onnx")
        onnx.save_model(proto, str(src))
        root = logging.getLogger()  # where it logs its advice to pre-process image models
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            # MatMul/Gemm only: ONNX Runtime's ConvInteger ran the patch embedding 6x slower
            # than the float Conv (1.5 against 0.26 ms per 8 clips of the FSDD model)
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
        quantized = onnx.load(str(dst))
    _int8_conv_weights(quantized.graph)
    return quantized


def _int8_conv_weights(graph, min_size: int = 1024) -> None:
    """Store each Conv's float weight (``min_size`` elements or more) as int8, symmetric per
    output channel, with a DequantizeLinear in front: the file shrinks as with ConvInteger,
    and the convolution itself still runs in float."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    new_nodes = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        tensor = inits[node.input[1]]
        w = numpy_helper.to_array(tensor)
        if w.dtype != np.float32 or w.size < min_size:
            continue
        scale = np.abs(w).reshape(w.shape[0], -1).max(1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127)
        name = tensor.name
        graph.initializer.remove(tensor)
        graph.initializer.extend([
            numpy_helper.from_array(q.astype(np.int8), f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{name}_zero")])
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [name],
            name=f"{name}_dequantize", axis=0))
    for n in reversed(new_nodes):  # inputs are initializers: first in topological order
        graph.node.insert(0, n)


def _session_and_export_info(onnx_model) -> tuple[Any, dict]:
    """An ONNX Runtime session of a path, bytes or ModelProto, and its ``earmark.export``
    metadata (kind, input lengths, chunk samples)."""
    if hasattr(onnx_model, "SerializeToString"):
        onnx_model = onnx_model.SerializeToString()
    session = open_session(onnx_model)
    return session, json.loads(session.get_modelmeta().custom_metadata_map[META_EXPORT])


def score_difference(model: nn.Module, onnx_model, clips: list[torch.Tensor] | None = None,
                     seed: int = 0) -> dict:
    """How far an exported (e.g. int8) graph's scores are from PyTorch's on ``clips``:
    ``max_abs_score_diff`` and ``mean_abs_score_diff`` of the probabilities, ``top1_agreement``
    (the share of clips, or chunks of a stream, whose best label is the same) and ``clips``."""
    session, info = _session_and_export_info(onnx_model)
    model = model.eval()
    if clips is None:
        gen = torch.Generator().manual_seed(seed)
        n = info["chunk_samples"] * 3 if info["kind"] == "stream" else \
            int(round(model.clip_seconds * model.sample_rate))
        clips = [0.1 * torch.randn(n, generator=gen) for _ in range(16)]
    refs, gots = [], []
    with torch.no_grad():
        for wave in clips:
            if info["kind"] == "stream":
                n = info["chunk_samples"]
                if wave.shape[-1] < n:  # a clip shorter than one chunk: zero-padded to one
                    wave = torch.nn.functional.pad(wave, (0, n - wave.shape[-1]))
                chunks = [wave[start:start + n].reshape(1, n)
                          for start in range(0, max(1, wave.shape[-1] - n + 1), n)]
                for ref, got in _stream_pairs(model, session, chunks):
                    refs.append(model.activation(ref[0])[0])
                    gots.append(model.activation(torch.from_numpy(got[0]))[0])
            else:
                lo, hi = info["min_samples"], info["max_samples"]
                x = wave[..., :hi]
                if x.shape[-1] < lo:
                    x = torch.nn.functional.pad(x, (0, lo - x.shape[-1]))
                x = x.reshape(1, -1)
                refs.append(model.activation(model(x))[0])
                got = run_session(session, {"wave": x.numpy()})[0]
                gots.append(model.activation(torch.from_numpy(got))[0])
    ref, got = torch.stack(refs), torch.stack(gots)
    diff = (ref - got).abs()
    return {"max_abs_score_diff": float(diff.max()), "mean_abs_score_diff": float(diff.mean()),
            "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).float().mean()),
            "clips": len(clips)}


def _resolve(model_or_dir, labels: list[str] | None) -> tuple[nn.Module, dict]:
    """-> (a CPU float32 eval copy of the model, its config.json dict)."""
    from earmark.infer.tagger import Tagger
    from earmark.models.directory import load_model, model_config

    fresh = isinstance(model_or_dir, (str, Path))  # loaded here: no one else holds it
    if fresh:
        model, config = load_model(model_or_dir)
    elif isinstance(model_or_dir, Tagger):
        model, config = model_or_dir.model, dict(model_or_dir.config)
    elif isinstance(model_or_dir, AudioModel):
        model = model_or_dir
        names = labels or [str(i) for i in range(model.num_classes)]
        config = model_config(model, list(names))
    else:
        raise ModelError(f"cannot export a {type(model_or_dir).__name__}; pass a model "
                         "directory, a run directory, a checkpoint, a Tagger or an AudioModel")
    if not isinstance(model, AudioModel):
        raise ModelError(f"cannot export a {type(model).__name__}: only PyTorch earmark models")
    if labels is not None:
        if len(labels) != model.num_classes:
            raise ModelError(f"{len(labels)} labels for a model with {model.num_classes} outputs")
        config["labels"] = list(labels)
    return (model if fresh else copy.deepcopy(model)).cpu().float().eval(), config


def _export_stream(model: StreamingAudioViT, name: str, chunk_seconds: float | None
                   ) -> tuple[Any, dict, dict[str, np.ndarray]]:
    seconds = chunk_seconds or default_chunk_seconds(model)  # what its streams use
    n = int(round(seconds * model.sample_rate))
    primed = model.prime_cache(1)
    args = (torch.zeros(1, n), primed.h0, primed.keys, primed.values)
    try:
        proto, _ = _to_onnx(ChunkStep(model).eval(), args, None, STREAM_INPUTS,
                            STREAM_OUTPUTS)
    except Exception as err:  # exporter errors have no common base class
        raise ModelError(f"{name}: the streaming graph does not export to ONNX: "
                         f"{first_line(err)}") from err
    info = {"kind": "stream", "batch": 1, "chunk_samples": n, "chunk_seconds": seconds,
            "cache_tokens": int(primed.tokens)}
    cache = {"h0": primed.h0.numpy(), "keys": primed.keys.numpy(),
             "values": primed.values.numpy()}
    return proto, info, cache


def _length_range(model: nn.Module) -> tuple[int, int, int] | None:
    """(min, max, window) samples a ViT graph takes with a dynamic length; None otherwise.

    The range is what ``torch.export`` can trace as one graph: at least two time patches
    (one patch broadcasts against the position embeddings) and fewer time patches than
    position embeddings (the slice ``time_pos_embed[..., :t]`` is then a proper one), and
    no more than ``max_frames``: 0.31 s to 10.07 s for the released ViTs.
    """
    if not isinstance(model, AudioViT) or isinstance(model, StreamingAudioViT):
        return None
    c = model.frontend.config
    (_, pt), (_, st) = model.patch_embed.patch_size, model.patch_embed.patch_stride
    grid_t = model.time_pos_embed.shape[-1]
    frames_lo = pt + st  # two time patches
    frames_hi = min(model.max_frames, (grid_t - 1) * st + pt - 1)  # grid_t - 1 patches
    if frames_hi < frames_lo:
        return None
    # a centred STFT gives 1 + samples // hop frames
    lo = max((frames_lo - 1) * c.hop_length, c.n_fft // 2 + 1)
    hi = frames_hi * c.hop_length - 1
    return lo, hi, model.target_length * c.hop_length


def _export_clip(model: AudioModel, name: str, chunk_seconds: float | None
                 ) -> tuple[Any, dict]:
    clip = int(round((chunk_seconds or model.clip_seconds) * model.sample_rate))
    batch = torch.export.Dim("batch", min=1, max=1024)
    attempts: list[tuple[dict, Any, int]] = []
    span = _length_range(model) if chunk_seconds is None else None
    if span is not None:
        lo, hi, window = span
        # DYNAMIC lets torch.export narrow the range rather than fail; the range it keeps
        # is read back below
        length = torch.export.Dim.DYNAMIC(min=lo, max=hi)
        n = min(max(clip, lo + 1), hi - 1)
        attempts.append(({"batch": None, "min_samples": lo, "max_samples": hi,
                          "window_samples": window}, ({0: batch, 1: length},), n))
    fixed = {"min_samples": clip, "max_samples": clip, "window_samples": clip}
    attempts.append(({"batch": None, **fixed}, ({0: batch},), clip))
    attempts.append(({"batch": 1, **fixed}, None, clip))
    errors = []
    for info, dynamic, n in attempts:
        example = torch.zeros(1 if info["batch"] == 1 else 2, n)
        try:
            proto, program = _to_onnx(model, (example,), dynamic, ["wave"], ["logits"])
        except Exception as err:  # exporter errors have no common base class
            errors.append(first_line(err))
            log.info("%s: export with %s failed (%s)", name, info, errors[-1])
            continue
        if info["min_samples"] != info["max_samples"]:
            lo, hi = _input_range(program, 1)
            info.update(min_samples=max(lo, info["min_samples"]),
                        max_samples=min(hi, info["max_samples"]))
            info["window_samples"] = min(info["window_samples"], info["max_samples"])
        _name_dims(proto, {(0, 0): "batch", (0, 1): "samples"})
        return proto, {"kind": "clip", **info}
    raise ModelError(f"{name}: does not export to ONNX ({len(errors)} tries, last error: "
                     f"{errors[-1]})")


def _input_range(program, axis: int) -> tuple[int, int]:
    """The range torch.export kept for ``axis`` of the first input (a dynamic dim)."""
    first = next(n for n in program.graph.nodes if n.op == "placeholder"
                 and n.name not in program.graph_signature.inputs_to_parameters
                 and n.name not in program.graph_signature.inputs_to_buffers)
    vr = program.range_constraints[first.meta["val"].shape[axis].node.expr]
    return int(vr.lower), int(vr.upper)


def _to_onnx(module: nn.Module, args: tuple, dynamic_shapes, input_names: list[str],
             output_names: list[str]):
    """torch.export then ONNX -> (ModelProto, ExportedProgram); with torch's default
    decompositions first when the exporter's own fail."""
    with _quiet(), torch.no_grad():
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
        kw = dict(input_names=input_names, output_names=output_names, opset_version=OPSET,
                  dynamo=True, verbose=False)
        try:
            onnx_program = torch.onnx.export(program, **kw)
        except Exception:  # e.g. a view the exporter's own decomposition cannot make
            onnx_program = torch.onnx.export(program.run_decompositions(), **kw)
    proto = onnx_program.model_proto
    _strip_trace_metadata(proto.graph)
    return proto, program


def _strip_trace_metadata(graph) -> None:
    """Drop what the exporter records about the Python source of every node and value
    (stack traces with this machine's paths, module paths, FX nodes): 0.25 MB of the FSDD
    model's file, and nothing a runtime reads. The model's own metadata stays."""
    for item in (*graph.node, *graph.value_info, *graph.initializer, *graph.input,
                 *graph.output):
        if hasattr(item, "metadata_props"):
            del item.metadata_props[:]
        item.doc_string = ""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                _strip_trace_metadata(attr.g)


def _name_dims(proto, names: dict[tuple[int, int], str]) -> None:
    """Give the exporter's symbolic dims (``s94``) readable names: {(input, axis): name}."""
    rename = {}
    for (i, axis), new in names.items():
        dim = proto.graph.input[i].type.tensor_type.shape.dim[axis]
        if dim.dim_param:
            rename[dim.dim_param] = new
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's deprecation chatter and its notes on missing torchvision ops."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    props = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        prop = props.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)


def _encode(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32",
            "data": base64.b64encode(a.tobytes()).decode("ascii")}


# ---- check ---------------------------------------------------------------------------------


def check_onnx(model: nn.Module, onnx_model: str | Path | bytes, atol: float = 1e-4,
               seed: int = 0) -> float:
    """Largest absolute difference between onnxruntime (CPU) and PyTorch on random audio.

    Clip graphs are compared on a batch of two at the clip length and, when the length is
    dynamic, on one more length; stream graphs chunk by chunk over three chunks from the
    primed cache, comparing logits and the next cache as both sides thread their own.
    Raises :class:`~earmark.errors.ModelError` naming the output when any differs by more
    than ``atol`` (or is not finite).

        >>> import earmark
        >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
        >>> path = export_onnx(model, "m.onnx", chunk_seconds=1.0, check=False)
        >>> check_onnx(model, path) < 1e-4                        # the largest difference
        True
    """
    session, info = _session_and_export_info(onnx_model)
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    worst = 0.0
    with torch.no_grad():
        if info["kind"] == "stream":
            n = info["chunk_samples"]
            waves = [0.1 * torch.randn(1, n, generator=gen) for _ in range(3)]
            for step, (ref, got) in enumerate(_stream_pairs(model, session, waves)):
                for out, r, g in zip(STREAM_OUTPUTS, ref, got):
                    worst = max(worst, _compare(f"{out} of chunk {step + 1}", r, g, atol))
        else:
            lo, hi = info["min_samples"], info["max_samples"]
            clip = int(round(model.clip_seconds * model.sample_rate))
            shapes = [(1 if info["batch"] == 1 else 2, min(max(clip, lo), hi))]
            if lo != hi:  # both ends of a dynamic length
                shapes += [(1, lo), (1, hi)]
            for b, n in shapes:
                wave = 0.1 * torch.randn(b, n, generator=gen)
                got = run_session(session, {"wave": wave.numpy()})
                worst = max(worst, _compare(f"logits of {b}x{n} samples", model(wave), got[0],
                                            atol))
    return worst


def _stream_pairs(model: nn.Module, session, waves):
    """PyTorch's and onnxruntime's outputs (logits, then the cache) chunk by chunk, each side
    threading its own cache from the primed one."""
    cache = model.prime_cache(1)
    feeds = dict(zip(STREAM_INPUTS[1:],
                     (cache.h0.numpy(), cache.keys.numpy(), cache.values.numpy())))
    for wave in waves:
        logits, cache = model.forward_chunk(wave, cache)
        got = run_session(session, {"wave": wave.numpy(), **feeds})
        feeds = dict(zip(STREAM_INPUTS[1:], got[1:]))
        yield (logits, cache.h0, cache.keys, cache.values), got


def _compare(what: str, ref: torch.Tensor, got: np.ndarray, atol: float) -> float:
    ref = ref.detach().float().numpy()
    if ref.shape != got.shape:
        raise ModelError(f"ONNX check failed: {what} has shape {got.shape}, PyTorch {ref.shape}")
    diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    if not np.isfinite(got).all() or not diff <= atol:
        raise ModelError(f"ONNX check failed: {what} differs from PyTorch by {diff:.3g} "
                         f"(max absolute difference; atol {atol:g})")
    return diff




def calibration_clips(tagger, manifest, limit: int = 64) -> list[torch.Tensor]:
    """Clips to compare an int8 file's scores with float ones on (``clips`` of
    :func:`export_onnx`): the first ``limit`` items of the test split of ``manifest`` (every
    item where it has none), each read and fitted to the model's input length."""
    items = manifest.split_or_all("test").items[:limit]
    return [tagger.fit_wave(tagger.waveform(it.path)) for it in items]
