"""The codebook model of paper 001: slices, codes, histograms, masking, chunked clip scores."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import earmark
from earmark.errors import DataError
from earmark.models.codebook import FAMILIES, SLICES_PER_SECOND, nearest
from earmark.train.codebook import fit_codebook


def small(**kw):
    args = dict(codebook_size=8, ae_hidden=32, hidden=32) | kw
    return earmark.create_model("codebook", 5, **args).eval()


def test_families_give_143_slices_of_the_paper_sizes():
    assert SLICES_PER_SECOND == 143
    assert {k: v[:2] for k, v in FAMILIES.items()} == {
        "patch": (120, 80), "band": (12, 800), "envelope": (10, 960), "thumbnail": (1, 80)}
    model = small()
    spec = torch.randn(3, 96, 100)
    slices = model.slicer(spec)
    assert {k: tuple(v.shape) for k, v in slices.items()} == {
        "patch": (3, 120, 80), "band": (3, 12, 800), "envelope": (3, 10, 960),
        "thumbnail": (3, 1, 80)}
    # patch (i, j): bins 8i.., frames 10j..; bins vary slowest
    i, j = 7, 4
    assert torch.equal(slices["patch"][1, i * 10 + j].view(8, 10),
                       spec[1, 8 * i:8 * i + 8, 10 * j:10 * j + 10])
    assert torch.equal(slices["band"][2, 5].view(8, 100), spec[2, 40:48])
    assert torch.equal(slices["envelope"][0, 3].view(96, 10), spec[0, :, 30:40])
    thumb = F.interpolate(spec[:, None], size=(8, 10), mode="bicubic", antialias=True,
                          align_corners=False)
    torch.testing.assert_close(slices["thumbnail"].view(3, 8, 10), thumb[:, 0],
                               atol=1e-5, rtol=1e-5)


def test_bottleneck_is_input_over_compression():
    for f, sizes in ((10, {"patch": 8, "band": 80, "envelope": 96, "thumbnail": 8}),
                     (20, {"patch": 4, "band": 40, "envelope": 48, "thumbnail": 4})):
        model = small(compression=f)
        assert {k: ae.bottleneck for k, ae in model.autoencoders.items()} == sizes
        enc = model.autoencoders["band"].encoder
        linears = [m for m in enc if isinstance(m, torch.nn.Linear)]
        assert [m.out_features for m in linears] == [32, 32, 32, sizes["band"]]
        assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in enc)


def test_codes_are_nearest_centroids_and_histograms_sum_to_143():
    torch.manual_seed(0)
    model = small(codebook_size=16)
    for name in FAMILIES:
        c = model.centroids(name)
        c.copy_(torch.randn_like(c))
    chunks = torch.randn(4, 96, 100)
    z = model.bottlenecks(chunks)
    codes = model.codes(chunks)
    for name in FAMILIES:
        brute = torch.cdist(z[name], model.centroids(name)[None].expand(4, -1, -1)).argmin(-1)
        assert torch.equal(codes[name], brute)
    hist = model.histogram(chunks)
    assert hist.shape == (4, 4 * 16)
    assert torch.equal(hist.sum(1), torch.full((4,), 143.0))
    per_family = hist.view(4, 4, 16).sum(-1)
    assert torch.equal(per_family, torch.tensor([[120.0, 12, 10, 1]] * 4))
    assert nearest(torch.tensor([[0.9, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])) == 1


def test_masking_zeroes_counts_with_probability_p_in_training_only():
    model = small(mask_prob=0.35)
    counts = torch.randint(1, 5, (400, 4 * 8)).float()
    assert torch.equal(model.mask_counts(counts), counts)  # eval: no masking
    model.train()
    masked = model.mask_counts(counts)
    zeroed = (masked == 0).float().mean().item()
    assert 0.3 < zeroed < 0.4
    kept = masked != 0
    assert torch.equal(masked[kept], counts[kept])  # survivors keep their count
    assert torch.equal(small(mask_prob=0.0).train().mask_counts(counts), counts)
    with pytest.raises(ValueError, match="mask_prob"):
        small(mask_prob=1.0)


def test_autoencoders_stay_in_eval_outside_their_stage():
    model = small()
    model.train()
    assert model.head.training and not model.autoencoders.training
    model.autoencoders_trainable = True
    model.train()
    assert model.autoencoders.training


def test_clip_scores_are_the_mean_of_one_second_chunks():
    torch.manual_seed(1)
    model = small()
    for name in FAMILIES:
        c = model.centroids(name)
        c.copy_(torch.randn_like(c))
    spec = model.frontend(torch.randn(2, 40000))  # 2.5 s: 251 frames
    chunks = model.chunk_spectrograms(spec)
    assert chunks.shape == (2, 3, 96, 100)
    assert torch.equal(chunks[:, 2], spec[..., -100:])  # the last second of the clip
    expected = model.activation(model.chunk_logits(spec)).mean(1)
    torch.testing.assert_close(model.activation(model.forward_spectrogram(spec)), expected,
                               atol=1e-5, rtol=1e-4)
    assert model.chunk_spectrograms(model.frontend(torch.randn(1, 16000))).shape[1] == 1
    assert model.chunk_spectrograms(model.frontend(torch.randn(1, 32000))).shape[1] == 2
    short = model.chunk_spectrograms(torch.randn(1, 96, 30))
    assert short.shape == (1, 1, 96, 100)


def test_kmeans_finds_separated_clusters_and_refuses_too_few_vectors():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    x = (centres[rng.integers(4, size=4000)] + rng.normal(0, 0.1, (4000, 2))).astype(np.float32)
    found, inertia = fit_codebook(x, 4, batch=512, epochs=2, seed=0)
    assert sorted(map(tuple, np.round(found).astype(int))) == sorted(
        map(tuple, centres.astype(int)))
    assert inertia < 0.05
    with pytest.raises(DataError, match="smaller codebook_size"):
        fit_codebook(x[:10], 16, batch=512, epochs=1, seed=0)
