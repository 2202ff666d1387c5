"""FSDD leave-one-speaker-out: a tagger trained on four speakers, tested on all 500 clips of
the fifth, with today's recipe ("baseline", BEST of bench/fsdd.py) against the robust
augmentation recipe ("robust": BEST plus ``earmark.train.recipes.RECIPES["robust"]``).

    python bench/fsdd_speakers.py                                  # LOSO: 2 recipes x 5 speakers x seeds 0,1,2
    python bench/fsdd_speakers.py --speakers george,jackson &      # pieces side by side (one
    python bench/fsdd_speakers.py --speakers nicolas,theo,yweweler # results file, runs skipped)
    python bench/fsdd_speakers.py --protocol official              # the official split (takes 0-4 test)
    python bench/fsdd_speakers.py --protocol ablation              # every group alone and all-but, seed 0
    python bench/fsdd_speakers.py --protocol ablation --ablate noise,reverb --ablate-mode without
    python bench/fsdd_speakers.py --protocol loso,official --set mixup=0.2 --name fsdd_speakers-mixup
    python bench/fsdd_speakers.py --table                          # tables and PNG from the saved rows
    python bench/fsdd_speakers.py --speakers theo --seeds 0 --epochs 1 --limit 200 --name smoke

Protocols: ``loso`` holds one speaker out (``group_split``: the four others train, a seeded
10 % of them validating; the whole held-out speaker, 500 clips, is the test set); ``official``
is the data set's own split (takes 0-4 of every speaker test); ``ablation`` is LOSO for the
augmentation groups (speed, pitch, vtlp, noise, reverb, colour = eq + band_limit + clipping,
mixup, specaugment = time/freq masks): "baseline+G" is the baseline with only G's settings
from the robust recipe, "robust-no-G" the robust recipe with G's probabilities (strengths)
set to 0. Groups the robust recipe does not switch on are skipped. ``--epochs`` overrides
every recipe (default: each recipe's own, BEST's 30 unless the robust recipe says otherwise);
``--set KEY=JSON`` (or ``--set '{"KEY": JSON, ...}'``) applies on top of every recipe.

Each finished run is appended at once to bench/results/NAME.json (under a lock, through a
temporary file and os.replace) as a row {protocol, recipe, held_out, seed, accuracy,
train_seconds, epochs, config, machine}; a run whose row is there already (same protocol,
recipe, held-out speaker, seed and configuration) is skipped, so the script can be stopped,
restarted and run in several pieces at once (a run another live piece is training is skipped
too). Runs live in bench/results/NAME-runs/RECIPE-HELDOUT-sSEED/ (model/ kept, checkpoints
deleted). The machine row holds a 1024x1024 float32 matmul rate measured once per invocation.

``--table`` (also printed after training) shows LOSO per speaker (mean over seeds; mean +-
std over the speaker means and the worst speaker; mean +- std over seeds of each seed's LOSO
mean), the official split, the ablation and training times, then a markdown table for
BENCHMARKS.md, and writes bench/results/NAME.png (per-speaker bars, baseline vs robust).
Standard deviations are sample ones (n - 1).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import fcntl
import json
import os
import platform
import random
import shutil
import socket
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import MISSING, fields, replace
from pathlib import Path

import torch

from earmark.data.sources import from_spec
from earmark.data.splits import group_split, split_manifest
from earmark.profile import matmul_gflops
from earmark.train.config import ACOUSTIC_FIELDS, TrainConfig
from earmark.train.recipes import RECIPES
from earmark.train.run import train
from earmark.train.rundir import RunDirError

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
import fsdd  # noqa: E402  (BEST, its recipes, the FSDD front end, DEFAULT_DATA)

DEFAULT_DATA = fsdd.DEFAULT_DATA
SPEAKERS = ("george", "jackson", "nicolas", "theo", "yweweler")
RECIPE_NAMES = ("baseline", "robust", "robust-cmn", "codebook")
# variants of the robust recipe kept beside it under their own names: 30 epochs, and on the
# FSDD band with each clip's mean log-mel taken out (bench/fsdd.py, recipe "robust-cmn")
EARLIER = ("robust-30ep", "robust-cmn")
PROTOCOLS = ("loso", "official", "ablation")
MODES = ("alone", "without")
TARGET_MEAN = 0.95  # LOSO mean accuracy the robust recipe aims at
FLOOR = 0.90  # no speaker below this

# augmentation groups of the ablation: every TrainConfig field of the group, and the fields
# whose 0 switches the group off (probability or strength)
GROUPS: dict[str, tuple[str, ...]] = {
    "speed": ("speed", "speed_range"),
    "pitch": ("pitch", "pitch_semitones"),
    "vtlp": ("vtlp", "vtlp_range"),
    "noise": ("noise", "noise_snr", "noise_dir"),
    "reverb": ("reverb", "reverb_rt60", "rir_dir"),
    "colour": ("eq", "eq_db", "band_limit", "clipping"),
    "mixup": ("mixup",),
    "specaugment": ("time_mask", "freq_mask", "time_masks", "freq_masks"),
}
SWITCHES: dict[str, tuple[str, ...]] = {
    "speed": ("speed",), "pitch": ("pitch",), "vtlp": ("vtlp",), "noise": ("noise",),
    "reverb": ("reverb",), "colour": ("eq", "band_limit", "clipping"), "mixup": ("mixup",),
    "specaugment": ("time_mask", "freq_mask"),
}
# configuration fields that do not change what a run computes (not compared when skipping)
BOOKKEEPING = ("out", "progress", "num_workers")
FIXED = ("data", "out", "seed")  # set by the script per run, not by --set


# ---- recipes ---------------------------------------------------------------------------------


def best() -> dict:
    """BEST of bench/fsdd.py, a fresh copy."""
    return fsdd.recipe("baseline")


def codebook() -> dict:
    """The codebook model (paper 001) as bench/codebook.py chose it on validation (F 20, D 64,
    a 512-unit head with dropout 0.4, 512-unit autoencoders, its stages and head training),
    plus the robust recipe's acoustic augmentations on the shifted training copies its
    histograms are computed from, code masking at 0.2, and its front end on FSDD's band with
    each clip's mean log-mel taken out (FSDD_BAND)."""
    robust = robust_overrides()
    return dict(model="codebook", clip_seconds=1.0, fit="repeat", epochs=30, batch_size=64,
                lr=1e-3, weight_decay=1e-4, warmup_epochs=1, ae_steps=1500, ae_batch=256,
                codebook_chunks=20000, kmeans_epochs=3, feature_views=8, gain_db=6.0,
                top_k_average=1,
                model_args={"codebook_size": 64, "compression": 20, "hidden": 512,
                            "head_dropout": 0.4, "mask_prob": 0.2, "ae_hidden": 512,
                            "frontend": {"preset": "codebook", **fsdd.FSDD_BAND}},
                **{k: robust[k] for k in ACOUSTIC_FIELDS if k in robust})


def robust_overrides() -> dict:
    if "robust" not in RECIPES:
        sys.exit("earmark.train.recipes.RECIPES has no 'robust' recipe in this tree yet")
    return copy.deepcopy(RECIPES["robust"])


def merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s values; model_args merged key by key."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if k == "model_args" and isinstance(v, dict):
            out["model_args"] = {**out.get("model_args", {}), **copy.deepcopy(v)}
        else:
            out[k] = copy.deepcopy(v)
    return out


def ablated_groups(wanted: list[str]) -> list[str]:
    """The groups of ``wanted`` the robust recipe switches on (the others are reported)."""
    robust = robust_overrides()
    groups = []
    for g in wanted:
        if any(robust.get(k) for k in SWITCHES[g]):
            groups.append(g)
        else:
            print(f"ablation: group {g!r} is not switched on by RECIPES['robust']; skipped")
    return groups


def recipe(name: str) -> dict:
    """TrainConfig fields of a recipe: baseline, robust, robust-cmn, codebook, baseline+G or
    robust-no-G."""
    if name == "baseline":
        return best()
    if name in ("robust", "robust-cmn"):
        return fsdd.recipe(name)
    if name == "codebook":
        return codebook()
    if name.startswith("baseline+"):
        g = name[len("baseline+"):]
        robust = robust_overrides()
        return merged(best(), {k: robust[k] for k in GROUPS[g] if k in robust})
    if name.startswith("robust-no-"):
        g = name[len("robust-no-"):]
        return merged(recipe("robust"), {k: 0 for k in SWITCHES[g]})
    raise ValueError(f"unknown recipe {name!r}")


def overrides(items: list[str]) -> dict:
    """The --set options: KEY=JSON or a JSON object."""
    out: dict = {}
    for s in items:
        s = s.strip()
        if s.startswith("{"):
            out.update(json.loads(s))
        else:
            k, sep, v = s.partition("=")
            if not sep:
                sys.exit(f"--set {s!r}: expected KEY=JSON or a JSON object")
            try:
                out[k.strip()] = json.loads(v)
            except json.JSONDecodeError:
                out[k.strip()] = v  # a bare string (a path, say)
    for k in out:
        if k in FIXED:
            sys.exit(f"--set {k}: set by the script (use --data, --seeds)")
    return out


# ---- the runs --------------------------------------------------------------------------------


def machine_info(threads: int) -> dict:
    return {"host": socket.gethostname(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "matmul_gflops": round(matmul_gflops(), 1)}


def _defaults() -> dict:
    out = {}
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


def comparable(config: dict) -> dict:
    """``config`` as compared for skipping: a field missing from it (a row written before the
    field existed) counts as its default; tuples as lists, as in the file."""
    config = json.loads(json.dumps({**_defaults(), **config}))
    return {k: v for k, v in config.items() if k not in BOOKKEEPING}


def same_run(row: dict, job: dict) -> bool:
    return (row.get("protocol"), row.get("recipe"), row.get("held_out"), row.get("seed"),
            row.get("limit")) == (job["protocol"], job["recipe"], job["held_out"], job["seed"],
                                  job["limit"]) \
        and comparable(row.get("config", {})) == comparable(job["config"])


@contextmanager
def locked(path: Path):
    """An exclusive lock beside ``path``, for the read-modify-write of the results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def append_row(path: Path, row: dict) -> None:
    with locked(path):
        rows = load_rows(path) + [row]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(rows, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def done(path: Path, job: dict) -> bool:
    with locked(path):
        return any(same_run(r, job) for r in load_rows(path))


def _compared(config: dict) -> dict:
    args = {k: v for k, v in config.get("model_args", {}).items() if k != "frontend"}
    return comparable({**config, "model_args": args, "max_minutes": None})


def earlier_row(job: dict, recipe: str | None = None,
                rows: list[dict] | None = None) -> dict | None:
    """This script's row (bench/results/fsdd_speakers.json) of the same run as another
    script's ``job``, under ``recipe`` (default: the job's own), if there is one. Codebook rows
    spell the front end out where the recipe names its preset, so the front end is left out
    of the comparison (the preset is the one those runs resolved); so is the time limit of a
    run that finished all its epochs within it. ``rows``: that file's rows, read once by a
    caller asking for many jobs."""
    want = _compared(job["config"])
    key = (job["protocol"], recipe or job["recipe"], job["held_out"], job["seed"])
    for r in rows if rows is not None else load_rows(RESULTS / "fsdd_speakers.json"):
        if ((r["protocol"], r["recipe"], r["held_out"], r["seed"]) == key
                and r["epochs"] == job["config"]["epochs"] and _compared(r["config"]) == want):
            return r
    return None


def limited(split, n: int | None, seed: int):
    """(train, valid, test) with at most n training and n // 10 validation items (smoke runs)."""
    if not n:
        return split
    train_m, valid_m, test_m = split
    rng = random.Random(seed)
    pick = lambda m, k: replace(m, items=rng.sample(m.items, min(k, len(m))))  # noqa: E731
    return pick(train_m, n), pick(valid_m, max(2, n // 10)), test_m


def jobs_for(a, spec: str, runs_dir: Path) -> list[dict]:
    sets = overrides(a.set)
    protocols = a.protocol.split(",")
    speakers = a.speakers.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = []

    def add(protocol: str, name: str, held_out: str, seed: int) -> None:
        values = recipe(name)
        if a.epochs is not None:
            values["epochs"] = a.epochs
        values = merged(values, sets)
        out = runs_dir / f"{name}-{held_out}-s{seed}"
        config = TrainConfig.from_dict(dict(values, data=spec, out=str(out), seed=seed,
                                            max_minutes=a.max_minutes, num_workers=0,
                                            progress=False))
        jobs.append({"protocol": protocol, "recipe": name, "held_out": held_out, "seed": seed,
                     "limit": a.limit, "config": config.to_dict()})

    recipes = a.recipes.split(",")
    for protocol in protocols:
        if protocol == "loso":
            for seed in seeds:
                for spk in speakers:
                    for name in recipes:
                        add("loso", name, spk, seed)
        elif protocol == "official":
            for seed in seeds:
                for name in recipes:
                    add("official", name, "official", seed)
        elif protocol == "ablation":
            wanted = list(GROUPS) if a.ablate == "all" else a.ablate.split(",")
            groups = ablated_groups(wanted)
            modes = a.ablate_mode.split(",")
            variants = []
            for g in groups:
                for mode in modes:
                    name, ref = (f"baseline+{g}", "baseline") if mode == "alone" \
                        else (f"robust-no-{g}", "robust")
                    if recipe(name) == recipe(ref):
                        print(f"ablation: {name} is the {ref} recipe itself; skipped")
                    else:
                        variants.append(name)
            for seed in (int(s) for s in a.ablate_seeds.split(",")):
                for name in variants:
                    for spk in speakers:
                            add("ablation", name, spk, seed)
    return jobs


def run_one(job: dict, manifest, machine: dict) -> dict:
    config = TrainConfig.from_dict(job["config"])
    if job["held_out"] == "official":
        split = limited(split_manifest(manifest, None, job["seed"]), job["limit"], job["seed"]) \
            if job["limit"] else None
    else:
        split = limited(group_split(manifest, job["held_out"], job["seed"]), job["limit"],
                        job["seed"])
    t0 = time.time()
    result = train(config, split=split, overwrite=True)  # its own folder
    wall = time.time() - t0
    test = result["test"]
    accuracy = test["accuracy"] if "accuracy" in test else test.get("top1_accuracy")
    shutil.rmtree(Path(config.out) / "checkpoints", ignore_errors=True)
    return {"protocol": job["protocol"], "recipe": job["recipe"], "held_out": job["held_out"],
            "seed": job["seed"], "accuracy": accuracy, "test_clips": test.get("num_clips"),
            "train_seconds": result["train_seconds"], "wall_seconds": round(wall, 1),
            "epochs": result["epochs"], "limit": job["limit"], "config": job["config"],
            "machine": machine,
            "finished": datetime.datetime.now().isoformat(timespec="seconds")}


def run_jobs(todo: list[dict], results: Path, runner, describe) -> None:
    """Train each job not yet in ``results`` (``runner(job) -> row``), appending its row at
    once; a job another process finished or is training meanwhile is skipped.
    ``describe(job)`` names it in the log."""
    for i, job in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] {describe(job)}"
        if done(results, job):  # another piece finished it meanwhile
            print(f"{tag}: done elsewhere", flush=True)
            continue
        try:  # train() holds the run directory's lock: a live owner elsewhere refuses it
            row = runner(job)
        except RunDirError as err:
            print(f"{tag}: another process is training it; skipped ({err})", flush=True)
            continue
        append_row(results, row)
        print(f"{tag}: accuracy {row['accuracy']:.4f} ({row['epochs']} epochs, "
              f"{row['train_seconds']:.0f} s)", flush=True)


# ---- tables ----------------------------------------------------------------------------------


def latest(rows: list[dict]) -> tuple[list[dict], int]:
    """One row per (protocol, recipe, held_out, seed, limit), the last written; and how many
    earlier ones (another configuration under the same name) were left out."""
    by_key: dict = {}
    for r in rows:
        by_key[(r["protocol"], r["recipe"], r["held_out"], r["seed"], r.get("limit"))] = r
    return list(by_key.values()), len(rows) - len(by_key)


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def pm(xs: list[float]) -> str:
    if not xs:
        return "-"
    m, s = mean_std(xs)
    return f"{100 * m:.1f} +- {100 * s:.1f}" if len(xs) > 1 else f"{100 * m:.1f}"


def recipe_order(names) -> list[str]:
    return sorted(set(names), key=lambda n: (n not in RECIPE_NAMES,
                                              RECIPE_NAMES.index(n) if n in RECIPE_NAMES else 0,
                                              n.startswith("robust"), n))


def ablation_cell(ablation: list[dict], loso: list[dict], name: str, ref: str) -> str:
    """``name``'s LOSO mean and its change against ``ref`` on the same speakers and seeds."""
    sel = [r for r in ablation if r["recipe"] == name]
    if not sel:
        return "-"
    means = Loso(sel).speaker_means()
    mean = statistics.fmean(means.values())
    ref_means = Loso([r for r in loso if r["recipe"] == ref],
                     {r["seed"] for r in sel}).speaker_means(list(means))
    if len(ref_means) < len(means):
        return f"{pct(mean)}"
    return f"{pct(mean)} ({100 * (mean - statistics.fmean(ref_means.values())):+.1f})"


class Loso:
    """Accuracy by speaker and seed of one recipe's leave-one-speaker-out rows."""

    def __init__(self, rows: list[dict], seeds: set[int] | None = None):
        self.acc: dict[str, dict[int, float]] = {}
        for r in rows:
            if seeds is None or r["seed"] in seeds:
                self.acc.setdefault(r["held_out"], {})[r["seed"]] = r["accuracy"]

    def speakers(self) -> list[str]:
        return [s for s in SPEAKERS if s in self.acc] + sorted(set(self.acc) - set(SPEAKERS))

    def per_speaker(self, spk: str) -> list[float]:
        return list(self.acc.get(spk, {}).values())

    def speaker_means(self, speakers: list[str] | None = None) -> dict[str, float]:
        return {s: statistics.fmean(self.acc[s].values())
                for s in (speakers or self.speakers()) if self.acc.get(s)}

    def seed_means(self, speakers: list[str]) -> list[float]:
        """Each seed's LOSO mean, for the seeds run on every one of ``speakers``."""
        seeds = set.intersection(*(set(self.acc.get(s, {})) for s in speakers)) \
            if speakers else set()
        return [statistics.fmean(self.acc[s][k] for s in speakers) for k in sorted(seeds)]


def text_table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda row: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines])


def md_table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in lines])


def tables(rows: list[dict], current: dict | None = None) -> str:
    rows, superseded = latest(rows)
    out = []
    rates = [r["machine"]["matmul_gflops"] for r in rows if r.get("machine", {}).get("matmul_gflops")]
    head = "FSDD leave-one-speaker-out"
    if current:
        head += (f" | this machine: {current['matmul_gflops']:.1f} GFLOP/s (1024^2 float32 "
                 f"matmul), {current['torch_threads']} threads")
    if rates:
        head += (f" | runs' machines: median {statistics.median(rates):.1f} GFLOP/s "
                 f"({min(rates):.1f}-{max(rates):.1f}, {len(rates)} runs)")
    out.append(head)
    if superseded:
        out.append(f"({superseded} older rows of the same run name with another configuration "
                   "left out: the last one counts)")
    if any(r.get("limit") for r in rows):
        out.append("(rows with --limit are smoke runs on a training subset)")
    by = lambda p: [r for r in rows if r["protocol"] == p]  # noqa: E731

    # (1) LOSO per speaker
    loso = by("loso")
    stats: dict[str, Loso] = {}
    if loso:
        recipes = recipe_order(r["recipe"] for r in loso)
        stats = {n: Loso([r for r in loso if r["recipe"] == n]) for n in recipes}
        speakers = [s for s in SPEAKERS if any(s in st.acc for st in stats.values())]
        header = ["recipe", *speakers, "mean +- std (speakers)", "min speaker",
                  "mean +- std (seeds)", "complete seeds"]
        lines = []
        for n, st in stats.items():
            means = st.speaker_means(speakers)
            worst = min(means, key=means.get) if means else None
            seeds = st.seed_means(speakers)
            partial = f" ({len(means)}/{len(speakers)} spk)" if len(means) < len(speakers) else ""
            lines.append([n, *(pm(st.per_speaker(s)) for s in speakers),
                          pm(list(means.values())) + partial,
                          f"{pct(means[worst])} ({worst})" if worst else "-", pm(seeds),
                          str(len(seeds))])
        out += ["", "(1) LOSO accuracy %, held-out speaker (mean +- std over seeds)",
                text_table(header, lines)]

    # (2) official split
    official = by("official")
    if official:
        lines = []
        for n in recipe_order(r["recipe"] for r in official):
            accs = [r["accuracy"] for r in official if r["recipe"] == n]
            lines.append([n, pm(accs), str(len(accs))])
        out += ["", "(2) official split accuracy % (mean +- std over seeds)",
                text_table(["recipe", "accuracy", "seeds"], lines)]

    # (3) ablation
    ablation = by("ablation")
    if ablation:
        seeds = {r["seed"] for r in ablation}
        speakers = [s for s in SPEAKERS if any(r["held_out"] == s for r in ablation)]
        refs = {n: Loso([r for r in loso if r["recipe"] == n], seeds) for n in RECIPE_NAMES}
        header = ["recipe", *speakers, "LOSO mean", "vs ref"]
        lines = []

        def line(n: str, st: Loso, ref: str | None) -> list[str]:
            means = st.speaker_means(speakers)
            mean = statistics.fmean(means.values()) if means else None
            delta = "-"
            if ref and mean is not None:
                rm = refs[ref].speaker_means(list(means))
                if len(rm) == len(means):
                    delta = f"{100 * (mean - statistics.fmean(rm.values())):+.1f} vs {ref}"
            return [n, *(pct(means.get(s)) for s in speakers), pct(mean), delta]

        for n in RECIPE_NAMES:
            if refs[n].acc:
                lines.append(line(n, refs[n], None))
        for g in GROUPS:
            for n, ref in ((f"baseline+{g}", "baseline"), (f"robust-no-{g}", "robust")):
                sel = [r for r in ablation if r["recipe"] == n]
                if sel:
                    lines.append(line(n, Loso(sel), ref))
        out += ["", f"(3) ablation, LOSO accuracy % (seeds {sorted(seeds)}; alone = baseline+G, "
                "all-but = robust-no-G)", text_table(header, lines)]

    # (4) training time
    lines = []
    for p in PROTOCOLS:
        sel = by(p)
        for n in recipe_order(r["recipe"] for r in sel):
            t = [r["train_seconds"] for r in sel if r["recipe"] == n]
            e = [r["epochs"] for r in sel if r["recipe"] == n]
            lines.append([p, n, str(len(t)), f"{statistics.median(t):.0f}", f"{max(t):.0f}",
                          f"{statistics.median(e):g}"])
    if lines:
        total = sum(r["train_seconds"] for r in rows) / 3600
        out += ["", f"(4) training seconds per run ({total:.1f} h in all)",
                text_table(["protocol", "recipe", "runs", "median s", "max s", "epochs"], lines)]

    # markdown for BENCHMARKS.md
    if stats or official:
        speakers = [s for s in SPEAKERS if any(s in st.acc for st in stats.values())]
        header = ["recipe", *speakers, "LOSO mean", "min speaker", "official split"]
        lines = []
        for n in recipe_order([*stats, *(r["recipe"] for r in official)]):
            st = stats.get(n, Loso([]))
            means = st.speaker_means(speakers)
            worst = min(means, key=means.get) if means else None
            acc = [r["accuracy"] for r in official if r["recipe"] == n]
            lines.append([n, *(pm(st.per_speaker(s)) for s in speakers),
                          pm(list(means.values())),
                          f"{pct(means[worst])} ({worst})" if worst else "-", pm(acc)])
        seeds = sorted({r["seed"] for r in loso + official})
        note = (f"Accuracy %, mean +- std over seeds {seeds}; LOSO mean +- std over the speaker "
                f"means; each held-out speaker's 500 clips are its test set.")
        if rates:
            note += f" Machine: {statistics.median(rates):.0f} GFLOP/s float32 matmul."
        out += ["", "markdown for BENCHMARKS.md:", "", md_table(header, lines), "", note]
    if ablation:
        lines = []
        for g in GROUPS:
            cells = [ablation_cell(ablation, loso, f"baseline+{g}", "baseline"),
                     ablation_cell(ablation, loso, f"robust-no-{g}", "robust")]
            if cells != ["-", "-"]:
                lines.append([g, *cells])
        out += ["", md_table(["augmentation", "alone (baseline + it)", "all but it (robust - it)"],
                             lines),
                "", f"LOSO mean accuracy %, seeds {sorted({r['seed'] for r in ablation})}; "
                "in brackets the change against the baseline and the robust recipe."]
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> bool:
    """Per-speaker LOSO bars of baseline and robust (mean over seeds, error bars: std over
    seeds), the LOSO mean and the official split, with the 90 % and 95 % lines."""
    rows, _ = latest(rows)
    names = [n for n in ("baseline", *EARLIER, "robust", "codebook")
             if any(r["protocol"] == "loso" and r["recipe"] == n for r in rows)]
    if not names:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stats = {n: Loso([r for r in rows if r["protocol"] == "loso" and r["recipe"] == n])
             for n in names}
    speakers = [s for s in SPEAKERS if any(s in st.acc for st in stats.values())]
    official = {n: [r["accuracy"] for r in rows
                    if r["protocol"] == "official" and r["recipe"] == n] for n in names}
    groups = [*speakers, "LOSO mean"] + (["official split"] if any(official.values()) else [])
    fig = Figure(figsize=(max(7.0, 1.3 * len(groups) + 2), 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(names)
    colours = {"baseline": "#8c8c8c", "robust-30ep": "#c6dbef", "robust-cmn": "#6baed6",
               "robust": "#1f77b4",
               "codebook": "#ff7f0e"}
    lows = []
    for i, n in enumerate(names):
        st = stats[n]
        vals, errs = [], []
        for s in speakers:
            accs = st.per_speaker(s)
            m, sd = mean_std(accs) if accs else (float("nan"), 0.0)
            vals.append(100 * m)
            errs.append(100 * sd)
        seed_means = st.seed_means(speakers)
        means = st.speaker_means(speakers)
        m = statistics.fmean(means.values()) if means else float("nan")
        vals.append(100 * m)
        errs.append(100 * (mean_std(seed_means)[1] if seed_means else 0.0))
        if len(groups) > len(speakers) + 1:
            m, sd = mean_std(official[n]) if official[n] else (float("nan"), 0.0)
            vals.append(100 * m)
            errs.append(100 * sd)
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(groups))]
        bars = ax.bar(xs, vals, width, yerr=errs, capsize=3, label=n,
                      color=colours.get(n), edgecolor="black", linewidth=0.5)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v == v else "" for v in vals], fontsize=7,
                     padding=2)
        lows += [v - e for v, e in zip(vals, errs) if v == v]
    ax.axhline(100 * FLOOR, ls="--", color="#d62728", lw=1, label=f"{100 * FLOOR:.0f} % floor")
    ax.axhline(100 * TARGET_MEAN, ls="--", color="#2ca02c", lw=1,
               label=f"{100 * TARGET_MEAN:.0f} % mean target")
    ax.axvline(len(speakers) - 0.5, color="black", lw=0.5, alpha=0.4)
    ax.set_xticks(range(len(groups)), [f"{g}\n(held out)" if g in speakers else g
                                       for g in groups])
    ax.set_ylim(max(0.0, min([100 * FLOOR, *lows]) - 5), 101.5)
    ax.set_ylabel("test accuracy (%)")
    seeds = sorted({r["seed"] for r in rows if r["protocol"] == "loso"})
    ax.set_title("FSDD leave-one-speaker-out: trained on 4 speakers, tested on all 500 clips "
                 f"of the 5th\nmean over seeds {', '.join(map(str, seeds))}; error bars: std "
                 "over seeds", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4,
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ---- main ------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--protocol", default="loso", help=f"comma list of {', '.join(PROTOCOLS)}")
    p.add_argument("--recipes", default="baseline,robust", help="for loso and official")
    p.add_argument("--speakers", default=",".join(SPEAKERS), help="held out, one per run")
    p.add_argument("--seeds", default="0,1,2", help="for loso and official")
    p.add_argument("--ablate", default="all", help="comma list of " + ", ".join(GROUPS))
    p.add_argument("--ablate-mode", default="alone,without",
                   help="alone: baseline+G; without: robust-no-G")
    p.add_argument("--ablate-seeds", default="0")
    p.add_argument("--epochs", type=int, default=None, help="default: each recipe's own")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a training option in every recipe (or a JSON object)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--max-minutes", type=float, default=10.0, help="per run")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N training items per run (smoke tests only)")
    p.add_argument("--table", action="store_true", help="tables and plot from the saved rows")
    p.add_argument("--name", default="fsdd_speakers", help="results file stem")
    a = p.parse_args(argv)
    results = RESULTS / f"{a.name}.json"
    png = RESULTS / f"{a.name}.png"

    if a.table:
        rows = load_rows(results)
        if not rows:
            print(f"no rows in {results}", file=sys.stderr)
            return 1
        print(tables(rows))
        if plot(rows, png):
            print(f"\nwrote {png}")
        return 0

    for flag, values, known in (("--protocol", a.protocol, PROTOCOLS),
                                ("--recipes", a.recipes, RECIPE_NAMES),
                                ("--ablate", "" if a.ablate == "all" else a.ablate, GROUPS),
                                ("--ablate-mode", a.ablate_mode, MODES)):
        bad = [v for v in filter(None, values.split(",")) if v not in known]
        if bad:
            p.error(f"{flag}: unknown {', '.join(bad)}; known: {', '.join(known)}")
    data = Path(a.data).resolve()
    if not data.is_dir():
        print(f"FSDD not found at {data}", file=sys.stderr)
        return 2
    spec = f"fsdd:{data}"
    manifest = from_spec(spec)
    bad = sorted(set(a.speakers.split(",")) - set(manifest.groups()))
    if bad:
        p.error(f"--speakers: no clips of {', '.join(bad)}; speakers: "
                f"{', '.join(manifest.groups())}")

    torch.set_num_threads(a.threads)
    jobs = jobs_for(a, spec, RESULTS / f"{a.name}-runs")
    todo = [j for j in jobs if not done(results, j)]
    machine = machine_info(torch.get_num_threads())
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {results}; "
          f"matmul {machine['matmul_gflops']:.1f} GFLOP/s on {machine['torch_threads']} threads",
          flush=True)
    run_jobs(todo, results, lambda job: run_one(job, manifest, machine),
             lambda job: f"{job['protocol']} {job['recipe']} held out {job['held_out']} "
                         f"seed {job['seed']}")

    rows = load_rows(results)
    if rows:
        print()
        print(tables(rows, machine))
        if plot(rows, png):
            print(f"\nwrote {png}")
    print(f"results in {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
