"""Running an exported earmark ONNX file with onnxruntime: :class:`OnnxModel` behind the part
of the AudioModel API a :class:`~earmark.infer.tagger.Tagger` uses, and the file's metadata.
``earmark.infer.tagger.load`` (and :func:`~earmark.infer.tagger.load_onnx`) wrap it in a
Tagger; :mod:`earmark.export` writes and checks the files (see there for their layout and
where an ONNX model differs from PyTorch).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from earmark.errors import ModelError
from earmark.models.base import AudioModel
from earmark.models.sat import ChunkCache

__all__ = ["OnnxModel", "onnx_metadata"]

META_CONFIG = "earmark.config"
META_EXPORT = "earmark.export"
META_CACHE = "earmark.primed_cache"
META_CHECK = "earmark.check"
META_QUANT = "earmark.quantization"  # int8 files: how, and the scores' difference to fp32
STREAM_INPUTS = ["wave", "cache_h0", "cache_keys", "cache_values"]
STREAM_OUTPUTS = ["logits", "next_h0", "next_keys", "next_values"]
PROVIDERS = ["CPUExecutionProvider"]


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _decode(d: dict) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype="<f4")
    return a.reshape(d["shape"]).astype(np.float32)


def run_session(session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})


def open_session(onnx_model: str | Path | bytes, providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    source = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(source, opts, providers=providers or PROVIDERS)


# ---- runtime -------------------------------------------------------------------------------


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The earmark metadata of an exported file: ``config`` (config.json), ``export``
    (graph contract), ``check`` (None when unchecked); the primed cache is left out.

        >>> import earmark
        >>> from earmark.export import export_onnx
        >>> model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
        >>> path = export_onnx(model, "m.onnx", chunk_seconds=1.0, check=False,
        ...                    labels=["dog", "rooster"])
        >>> meta = onnx_metadata(path)
        >>> meta["config"]["labels"], meta["export"]["kind"], meta["export"]["max_samples"]
        (['dog', 'rooster'], 'clip', 16000)
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    return _metadata(open_session(path), path)


def _metadata(session, path) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    if META_CONFIG not in props or META_EXPORT not in props:
        raise ModelError(f"{path}: not an earmark ONNX export (no {META_CONFIG} metadata)")
    return {"config": json.loads(props[META_CONFIG]),
            "export": json.loads(props[META_EXPORT]),
            "check": json.loads(props[META_CHECK]) if META_CHECK in props else None,
            "quantization": json.loads(props[META_QUANT]) if META_QUANT in props else None}


class OnnxModel:
    """An exported file behind the AudioModel API the Tagger uses (onnxruntime, CPU default).

    ``model(wave)`` maps (B, N) samples at ``sample_rate`` to logits (B, C) as a torch
    tensor; ``activation`` turns them into scores. Stream files also have
    ``forward_chunk(wave, cache) -> (logits, cache)`` and ``prime_cache(batch)``, with
    caches as :class:`~earmark.models.sat.ChunkCache`. See the module docstring for where
    it differs from PyTorch.

        >>> import earmark
        >>> from earmark.export import export_onnx
        >>> sat = earmark.create_model("sat-tiny", 3, depth=1, embed_dim=48, num_heads=3,
        ...                            chunk_seconds=1.0)
        >>> m = OnnxModel(export_onnx(sat, "sat.onnx", check=False))
        >>> cache = m.prime_cache()
        >>> logits, cache = m.forward_chunk(torch.zeros(1, 16000), cache)
        >>> tuple(logits.shape), m.chunk_samples
        ((1, 3), 16000)
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such ONNX file")
        try:
            self.session = open_session(self.path, providers)
        except Exception as err:  # onnxruntime raises its own error types
            raise ModelError(f"{self.path}: not a readable ONNX file ({first_line(err)})"
                             ) from None
        meta = _metadata(self.session, self.path)
        self.config: dict = meta["config"]
        self.export_info: dict = meta["export"]
        self.check: dict | None = meta["check"]
        c, info = self.config, self.export_info
        self.registry_name: str = c["name"]
        self.family: str = c.get("family", "base")
        self.num_classes = int(c["num_classes"])
        self.sample_rate = int(c["sample_rate"])
        self.clip_seconds = float(c["clip_seconds"])
        self.multi_label = bool(c["multi_label"])
        self.fit = c.get("args", {}).get("fit")
        self.kind: str = info["kind"]
        self.is_streaming = self.kind == "stream"
        if self.kind == "stream":
            self.chunk_seconds = float(info["chunk_seconds"])
            self.chunk_samples = int(info["chunk_samples"])
            self.cache_tokens = int(info["cache_tokens"])
            raw = json.loads(self.session.get_modelmeta().custom_metadata_map[META_CACHE])
            self._primed = {k: torch.from_numpy(_decode(v)) for k, v in raw.items()}
        elif self.kind != "clip":
            raise ModelError(f"{self.path}: unknown graph kind {self.kind!r}")

    # the Tagger calls these on any model
    def eval(self) -> OnnxModel:
        return self

    def to(self, device) -> OnnxModel:
        return self

    activation = AudioModel.activation
    scores_to_logits = AudioModel.scores_to_logits

    def __call__(self, wave) -> torch.Tensor:
        """(B, N) or (N,) samples -> (B, C) logits."""
        wave = _as_batch(wave)
        if self.kind == "stream":
            return self.forward_chunk(wave)[0]
        info = self.export_info
        lo, hi, window = info["min_samples"], info["max_samples"], info["window_samples"]
        n = wave.shape[-1]
        if n < lo:
            need = f"exactly {lo}" if lo == hi else f"at least {lo}"
            raise ModelError(f"{self.path}: the graph takes {need} samples "
                             f"({lo / self.sample_rate:g} s), got {n}")
        if n <= hi:
            return self._clip(wave)
        # longer than one pass: windows, the last one ending at the end; scores averaged
        starts = list(range(0, n - window + 1, window))
        if starts[-1] + window < n:
            starts.append(n - window)
        scores = [self.activation(self._clip(wave[:, s:s + window])) for s in starts]
        return self.scores_to_logits(torch.stack(scores).mean(0))

    def _clip(self, wave: torch.Tensor) -> torch.Tensor:
        rows = [wave] if self.export_info["batch"] is None else wave.split(1)
        out = [run_session(self.session, {"wave": r.numpy()})[0] for r in rows]
        return torch.from_numpy(np.concatenate(out, 0))

    # ---- streaming ------------------------------------------------------------------------

    def prime_cache(self, batch: int = 1) -> ChunkCache:
        """The primed cache stored in the file, repeated ``batch`` times."""
        self._need_stream("prime_cache")
        p = self._primed
        return ChunkCache(p["h0"].repeat(batch, 1, 1), p["keys"].repeat(1, batch, 1, 1, 1),
                          p["values"].repeat(1, batch, 1, 1, 1))

    def forward_chunk(self, wave, cache: ChunkCache | None = None
                      ) -> tuple[torch.Tensor, ChunkCache]:
        """(B, N) samples and a cache (default: primed) -> (B, C) logits, the next cache.

        N is normally ``chunk_samples``; longer waves go through the cache chunk by chunk
        with their scores averaged, a short tail dropped (or zero-padded when it is all)."""
        self._need_stream("forward_chunk")
        wave = _as_batch(wave)
        b = wave.shape[0]
        cache = cache if cache is not None else self.prime_cache(b)
        if cache.h0.shape[:2] != (b, self.cache_tokens):
            raise ModelError(f"{self.path}: the graph needs a cache of {self.cache_tokens} tokens "
                             f"for a batch of {b} (start from prime_cache()), got "
                             f"{tuple(cache.h0.shape[:2])}")
        n = self.chunk_samples
        chunks = list(wave.split(n, -1))
        if chunks[-1].shape[-1] < n:
            if len(chunks) > 1:
                chunks.pop()
            else:
                chunks[0] = nn.functional.pad(chunks[0], (0, n - chunks[0].shape[-1]))
        logits, caches = [], []
        for i in range(b):
            state = [cache.h0[i:i + 1], cache.keys[:, i:i + 1], cache.values[:, i:i + 1]]
            state = [s.contiguous().float().numpy() for s in state]
            row = []
            for chunk in chunks:
                out = run_session(self.session, {"wave": chunk[i:i + 1].float().numpy(),
                                                  **dict(zip(STREAM_INPUTS[1:], state))})
                row.append(torch.from_numpy(out[0]))
                state = out[1:]
            if len(row) == 1:
                logits.append(row[0])
            else:
                scores = torch.stack([self.activation(r) for r in row]).mean(0)
                logits.append(self.scores_to_logits(scores))
            caches.append([torch.from_numpy(s) for s in state])
        h0, keys, values = zip(*caches)
        return torch.cat(logits), ChunkCache(torch.cat(h0), torch.cat(keys, 1),
                                             torch.cat(values, 1))

    def _need_stream(self, what: str) -> None:
        if self.kind != "stream":
            raise ModelError(f"{self.path}: {what} needs a streaming (SAT) export, "
                             f"this is a {self.kind} graph")

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, {self.registry_name}, {self.kind})"


def _as_batch(wave) -> torch.Tensor:
    wave = torch.as_tensor(wave).detach().cpu().float()
    return wave.unsqueeze(0) if wave.dim() == 1 else wave
