"""Cost of the training augmentations against the training step of the FSDD recipe.

    python bench/augment_cost.py [--data ../shared/data/fsdd] [--repeats 15] [--threads 2]

One batch of real FSDD clips (batch size, clip length and model of bench/fsdd.py), then the
median time of: a plain training step (forward, backward, AdamW update), the waveform
augmentations of the robust recipe (each on its own at probability 1 and at the recipe's
probability, then all together), and the whole augmented step. Times are medians over
interleaved repeats, so the ratios come from the same stretch of a noisy machine. Writes
bench/results/augment_cost.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fsdd import BEST, DEFAULT_DATA  # noqa: E402

from earmark.data.dataset import ClipDataset  # noqa: E402
from earmark.data.sources import from_spec  # noqa: E402
from earmark.models.registry import create_model  # noqa: E402
from earmark.profile import matmul_gflops  # noqa: E402
from earmark.train.config import ACOUSTIC, TrainConfig  # noqa: E402
from earmark.train.module import TaggingModule  # noqa: E402
from earmark.train.recipes import RECIPES  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        print(f"FSDD not found at {a.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    manifest = from_spec(f"fsdd:{a.data}").split("train")
    base = dict(BEST, model_args=dict(BEST["model_args"]))
    robust = dict(base, **RECIPES["robust"])
    model_name, model_args = base.pop("model"), base.pop("model_args")
    robust.pop("model"), robust.pop("model_args")
    ds = ClipDataset(manifest, 16000, base["clip_seconds"], train=True, fit=base["fit"])
    batch = [ds[i] for i in range(base["batch_size"])]
    wave = torch.stack([w for w, _ in batch])
    target = torch.stack([t for _, t in batch])

    def module(settings: dict) -> TaggingModule:
        torch.manual_seed(0)
        model = create_model(model_name, len(manifest.labels), clip_seconds=1.0, **model_args)
        cfg = TrainConfig(data="", **settings)
        m = TaggingModule(model, cfg, manifest.labels, steps_per_epoch=100)
        m.train()
        return m

    plain, full = module(base), module(robust)
    opt = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (plain, full)}

    def step(m: TaggingModule, augment: bool, i: int) -> None:
        w, t = m.augment(wave, target, i) if augment else (wave, target)
        loss = m.loss(m.model(w), t)
        opt[id(m)].zero_grad()
        loss.backward()
        opt[id(m)].step()

    # one module per augmentation, at probability 1 and at the recipe's probability
    single = {}
    for name in (*ACOUSTIC, "vtlp"):
        if RECIPES["robust"].get(name):
            for prob in (1.0, RECIPES["robust"][name]):
                settings = dict(base, mixup=0.0, time_mask=0, freq_mask=0, gain_db=0.0,
                                shift=0.0, polarity=0.0)
                settings.update({k: 0.0 for k in (*ACOUSTIC, "vtlp")})
                settings[name] = prob
                single[f"{name}@{prob:g}"] = module(settings)

    spec = plain.model.frontend(wave)

    def time_aug(m: TaggingModule, i: int) -> None:
        m.augment(wave, target, i)
        if m.model.spec_augment is not None:  # VTLP, SpecAugment: inside the forward
            m.model.spec_augment(spec)

    timings: dict[str, list[float]] = {}
    jobs = {"step (no augmentation)": lambda i: step(plain, False, i),
            "step (robust recipe)": lambda i: step(full, True, i),
            "augmentations (robust recipe)": lambda i: time_aug(full, i),
            **{f"{k}": (lambda i, m=m: time_aug(m, i)) for k, m in single.items()}}
    for job in jobs.values():  # warm-up: banks, kernels, allocator
        job(0)
    rate = matmul_gflops()
    for r in range(a.repeats):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job(r + 1)
            timings.setdefault(name, []).append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    plain_ms = med["step (no augmentation)"]
    print(f"batch {tuple(wave.shape)}, {a.threads} threads, matmul {rate:.0f} GFLOP/s")
    print(f"{'':<32} {'median ms':>10} {'% of plain step':>16}")
    for k, v in med.items():
        print(f"{k:<32} {v:>10.1f} {100 * v / plain_ms:>15.1f}%")
    report = {"benchmark": "augment_cost", "batch": list(wave.shape), "threads": a.threads,
              "median_ms": med, "percent_of_plain_step":
              {k: 100 * v / plain_ms for k, v in med.items()}, "repeats": a.repeats,
              "recipe": RECIPES["robust"],
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "matmul_gflops": round(rate, 1)}}
    out = HERE / "results" / "augment_cost.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
