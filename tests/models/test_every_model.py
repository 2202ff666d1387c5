"""Every registered model keeps the rules a user relies on: its output shape, a model directory
that loads back to the same scores, and (one model per family) an ONNX file that agrees with
PyTorch. Large models are built small through their own arguments."""

from __future__ import annotations

import pytest
import torch

import earmark
from earmark.models.directory import save_model_dir

CLASSES = 3


def small(name: str) -> dict:
    """Overrides that keep ``name`` cheap to build and run on a CPU."""
    if name.startswith(("vit-", "sat-")):
        return {"depth": 1, "clip_seconds": 1.0, **({"chunk_seconds": 1.0}
                                                   if name.startswith("sat-") else {})}
    if name == "htsat":
        return {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)}
    if name == "codebook":
        return {"codebook_size": 8, "ae_hidden": 32, "hidden": 16}
    return {}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return earmark.create_model(name, CLASSES, **small(name)).eval()


def wave(model, seconds: float | None = None, batch: int = 2, seed: int = 0) -> torch.Tensor:
    n = round((seconds or min(model.clip_seconds, 2.0)) * model.sample_rate)
    return 0.1 * torch.randn(batch, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", earmark.list_models())
def test_forward_shape_and_a_model_directory_that_loads_back(name, tmp_path):
    model = build(name)
    x = wave(model)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, CLASSES) and torch.isfinite(logits).all()
    labels = [f"c{i}" for i in range(CLASSES)]
    tagger = earmark.load(save_model_dir(model, tmp_path / "m", labels))
    assert tagger.labels == labels and tagger.config["name"] == name
    assert type(tagger.model) is type(model)
    with torch.no_grad():
        torch.testing.assert_close(tagger.model(x), logits, atol=1e-5, rtol=1e-5)


FAMILIES = {  # one registered model per family; the ViT and SAT also in tests/test_export.py
    "htsat": "htsat",
    "tokenlearner": "tesc-4l-8t-8h",
}


@pytest.mark.parametrize("family,name", sorted(FAMILIES.items()))
def test_each_family_exports_to_onnx_that_agrees_with_pytorch(family, name, tmp_path):
    from earmark.export import export_onnx
    from earmark.infer.tagger import load_onnx

    model = build(name)
    assert model.family == family
    model_dir = save_model_dir(model, tmp_path / "m", [f"c{i}" for i in range(CLASSES)])
    path = export_onnx(model_dir, tmp_path / "m.onnx")  # checked against PyTorch on export
    onnx_tagger = load_onnx(path)
    x = wave(model, model.clip_seconds, batch=1, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(onnx_tagger.model(x), model(x), atol=1e-4, rtol=0)
