"""Which earmark family generalises to new speakers: FSDD leave-one-speaker-out (robust recipe,
real recordings only, seed 0) for every family that takes 1 s clips at FSDD's size, with
accuracy, FLOPs and parameters side by side.

    python bench/fsdd_families.py                                 # every family x 5 speakers
    python bench/fsdd_families.py --families htsat-tiny,sat       # some of them
    python bench/fsdd_families.py --speakers george,jackson &     # pieces side by side
    python bench/fsdd_families.py --table                         # the table from saved rows

Each family is the robust recipe of bench/fsdd_speakers.py (bench/fsdd.py's BEST plus
``earmark.train.recipes.RECIPES["robust"]``: 60 epochs, the acoustic augmentations) with its
own model in place of BEST's ViT, at the size the family's registry name gives; the codebook
model keeps its own recipe (bench/fsdd_speakers.py ``codebook``), whose head trains with the
same augmentations. The rows of the ViT and the codebook model that bench/fsdd_speakers.py
has already written (recipes ``robust`` and ``codebook``, seed 0, the same configuration) are
read from bench/results/fsdd_speakers.json rather than trained again.

Each finished run is appended at once to bench/results/fsdd_families.json (bench/fsdd_speakers'
locked, atomic append); a run already there is skipped, so the script can be stopped,
restarted and run in pieces. FLOPs and parameters are counted on one 1 s clip
(``earmark.profile.profile_model``); the machine row holds the float32 matmul rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fsdd_speakers as loso  # noqa: E402  (recipes, the run and its results file)

from earmark.data.sources import from_spec  # noqa: E402
from earmark.train.config import TrainConfig  # noqa: E402

SEED = 0
# family -> (the recipe name its rows carry, the TrainConfig fields that replace the ViT's)
FAMILIES: dict[str, tuple[str, dict]] = {
    "vit": ("robust", {}),
    "htsat-tiny": ("robust-htsat-tiny", {"model": "htsat-tiny", "model_args": {}}),
    "tasr": ("robust-tasr", {"model": "tasr-4l-4t-8h", "model_args": {}}),
    "tesc": ("robust-tesc", {"model": "tesc-4l-8t-8h", "model_args": {}}),
    "sat": ("robust-sat", {"model": "sat-tiny",
                           "model_args": {"chunk_seconds": 1.0, "depth": 4, "embed_dim": 128,
                                          "num_heads": 4, "patch_stride": [16, 8]}}),
    "codebook": ("codebook", {}),
}
def family_config(family: str) -> dict:
    name, changes = FAMILIES[family]
    base = loso.recipe("codebook" if family == "codebook" else "robust")
    # the model's own arguments replace BEST's ViT ones rather than merge with them
    return {**loso.merged(base, changes), **changes}


def jobs_for(families: list[str], speakers: list[str], spec: str, runs: Path,
             max_minutes: float) -> list[dict]:
    jobs = []
    for family in families:
        name = FAMILIES[family][0]
        for spk in speakers:
            out = runs / f"{name}-{spk}-s{SEED}"
            config = TrainConfig.from_dict(dict(family_config(family), data=spec, out=str(out),
                                                seed=SEED, max_minutes=max_minutes,
                                                num_workers=0, progress=False))
            jobs.append({"protocol": "loso", "recipe": name, "held_out": spk, "seed": SEED,
                         "limit": None, "config": config.to_dict(), "family": family})
    return jobs


def cost(family: str) -> dict:
    """Parameters and GFLOPs of one 1 s clip through the family's model."""
    import earmark
    from earmark.profile import profile_model

    values = family_config(family)
    model = earmark.create_model(values["model"], 10, clip_seconds=values["clip_seconds"],
                                 **values.get("model_args", {}))
    result = profile_model(model, seconds=1.0, repeats=1)
    return {"params": result["params"], "gflops": result["gflops_per_clip"]}


def table(rows: list[dict], families: list[str]) -> str:
    header = ["family", *loso.SPEAKERS, "mean", "worst", "params", "GFLOPs / 1 s"]
    lines = []
    for family in families:
        name = FAMILIES[family][0]
        acc = {r["held_out"]: r["accuracy"] for r in rows
               if r["recipe"] == name and r["seed"] == SEED and r["protocol"] == "loso"}
        c = cost(family)
        got = [acc[s] for s in loso.SPEAKERS if s in acc]
        lines.append([family, *(loso.pct(acc.get(s)) for s in loso.SPEAKERS),
                      loso.pct(statistics.fmean(got)) if len(got) == 5 else "-",
                      loso.pct(min(got)) if len(got) == 5 else "-",
                      f"{c['params'] / 1e6:.2f} M", f"{c['gflops']:.3f}"])
    return loso.md_table(header, lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(loso.DEFAULT_DATA))
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--speakers", default=",".join(loso.SPEAKERS))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--max-minutes", type=float, default=20.0,
                   help="per run (bench/fsdd_speakers.py's robust runs had 20)")
    p.add_argument("--table", action="store_true", help="the table from the saved rows")
    p.add_argument("--name", default="fsdd_families", help="results file stem")
    a = p.parse_args(argv)
    results = loso.RESULTS / f"{a.name}.json"
    families = a.families.split(",")
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        p.error(f"--families: unknown {', '.join(bad)}; known: {', '.join(FAMILIES)}")
    data = Path(a.data).resolve()
    spec = f"fsdd:{data}"
    jobs = jobs_for(families, a.speakers.split(","), spec, loso.RESULTS / f"{a.name}-runs",
                    a.max_minutes)
    if not a.table:
        if not data.is_dir():
            print(f"FSDD not found at {data}", file=sys.stderr)
            return 2
        manifest = from_spec(spec)
        torch.set_num_threads(a.threads)
        todo = [j for j in jobs if not loso.done(results, j) and loso.earlier_row(j) is None]
        machine = loso.machine_info(torch.get_num_threads())
        print(f"{len(jobs)} runs, {len(jobs) - len(todo)} done; matmul "
              f"{machine['matmul_gflops']:.1f} GFLOP/s on {machine['torch_threads']} threads",
              flush=True)
        loso.run_jobs(todo, results,
                      lambda job: dict(loso.run_one(job, manifest, machine), family=job["family"]),
                      lambda job: f"{job['family']} held out {job['held_out']}")
    rows = loso.load_rows(results) + [r for j in jobs if (r := loso.earlier_row(j)) is not None]
    print(table(rows, families))
    print(f"results in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
