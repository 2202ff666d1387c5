"""Spoken digits from text: FSDD taggers trained with synthetic voices (``earmark voices``),
judged on the five real speakers of ../shared.

    python bench/fsdd_voices.py --protocol loso              # (a) real only vs real + voices
    python bench/fsdd_voices.py --protocol text              # (b) voices only, tested on real
    python bench/fsdd_voices.py --protocol official          # (c) the official split + voices
    python bench/fsdd_voices.py --final                      # (d) the model the README uses
    python bench/fsdd_voices.py --table                      # tables and plot from saved rows
    python bench/fsdd_voices.py --protocol loso --speakers theo --seeds 0 --share 0.3,0.5
    python bench/fsdd_voices.py --protocol loso --speakers nicolas --seeds 0 --set group_adversarial=0.3
    python bench/fsdd_voices.py --protocol loso --speakers nicolas --seeds 0 --share 0.1 --mae 30

Protocols:

- ``loso`` (a): one real speaker held out (all 500 of its clips are the test set), the other
  four train; recipe ``real`` is bench/fsdd_speakers.py's robust recipe, ``voices`` the same
  with every synthetic clip added to the training split (``--synthetic``) at a share of each
  batch (``--synthetic-share``, one row per ``--share``). ``--mae EPOCHS`` first pretrains
  each run's encoder as a masked autoencoder on its training audio, real and synthetic
  (``--stage mae``), and fine-tunes from it (``--init``).
- ``text`` (b): the synthetic voices alone train (a seeded 10 % of them validate); the test
  set is all 2,500 clips of the five real speakers: a keyword tagger from text alone.
- ``official`` (c): FSDD's own split (takes 0-4 of every speaker test) with the voices added.
- ``--final`` (d): ``official`` with the voices, seed 0, its model directory copied to
  bench/results/fsdd-voices/model (FSDD's labels ``0``-``9``).

The voices are made first where ``--voices DIR`` holds no ``manifest.csv`` (``earmark voices
zero,...,nine DIR --labels zero=0,...``); bench/results/fsdd-voices/ is not committed.
Each finished run is appended at once to bench/results/fsdd_voices.json (bench/fsdd_speakers'
locked, atomic append) and skipped when run again, so the grid can be stopped, restarted and
split across processes. The machine row holds the float32 matmul rate.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fsdd_speakers as loso  # noqa: E402  (the robust recipe, the run and its results file)

from earmark.data.sources import from_spec  # noqa: E402
from earmark.data.splits import carve_validation, group_split, split_manifest  # noqa: E402
from earmark.train.config import TrainConfig  # noqa: E402
from earmark.train.recipes import RECIPES  # noqa: E402
from earmark.train.run import train  # noqa: E402
from earmark.train.rundir import run_lock  # noqa: E402

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HOME = loso.RESULTS / "fsdd-voices"
PROTOCOLS = ("loso", "text", "official")


def make_voices(folder: Path, seed: int = 0, workers: int = 2) -> Path:
    """``folder/manifest.csv``, speaking the ten digits with every voice found (once)."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        from earmark.voices import speak_words

        print(f"making the voices in {folder} ...", flush=True)
        t0 = time.time()
        speak_words(list(WORDS), folder, labels={w: str(i) for i, w in enumerate(WORDS)},
                    seed=seed, workers=workers, progress=sys.stderr.isatty())
        print(f"voices made in {time.time() - t0:.0f} s", flush=True)
    return manifest


def config_for(name: str, share: float | None, voices: str | None, data: str, out: Path,
               seed: int, max_minutes: float, sets: dict) -> TrainConfig:
    values = loso.merged(loso.recipe("robust"), sets)
    if name == "voices":
        values.update(synthetic=voices, synthetic_share=share)
    return TrainConfig.from_dict(dict(values, data=data, out=str(out), seed=seed,
                                      max_minutes=max_minutes, num_workers=0, progress=False))


def mae_config(fine: TrainConfig, epochs: int, out: Path) -> TrainConfig:
    """Masked-autoencoder pretraining (``--stage mae``, paper 003's schedule: batch 64, lr 2e-4
    with 3 warm-up epochs, cosine to a tenth) of the run's encoder on its training audio: the
    real training speakers and, where the run has them, every synthetic voice in one pool.
    Labels play no part; the held-out speaker is never heard. The decoder is as wide as this
    small encoder (128, 2 blocks): a block of the default one (512 wide, 4 blocks) costs 16
    times one of the encoder's per patch, on four times as many patches."""
    return TrainConfig.from_dict(dict(
        data=fine.data, out=str(out), model=fine.model, model_args=fine.model_args,
        clip_seconds=fine.clip_seconds, fit=fine.fit, stage="mae", epochs=epochs,
        batch_size=64, lr=2e-4, min_lr_ratio=0.1, warmup_epochs=3, seed=fine.seed,
        decoder_dim=128, decoder_depth=2, decoder_heads=4,
        synthetic=fine.synthetic, max_minutes=fine.max_minutes, num_workers=0,
        progress=False))


def jobs_for(a, spec: str, voices_spec: str) -> list[dict]:
    runs = loso.RESULTS / f"{a.name}-runs"
    shares = [None if s == "all" else float(s) for s in a.share.split(",")]
    sets = loso.overrides(a.set)
    # a run with --set carries its settings in its name: "voices-0.3+group_adversarial=0.3"
    suffix = "".join(f"+{k}={v}" for k, v in sorted(sets.items()))
    suffix += f"+mae{a.mae}" if a.mae else ""
    jobs = []

    def add(protocol: str, name: str, held_out: str, seed: int, share=None) -> None:
        tag = name if name != "voices" else f"voices-{'all' if share is None else share}"
        tag += suffix
        data = voices_spec if protocol == "text" else spec
        out = runs / f"{protocol}-{tag}-{held_out}-s{seed}"
        config = config_for(name, share, voices_spec, data, out, seed, a.max_minutes, sets)
        job = {"protocol": protocol, "recipe": tag, "held_out": held_out, "seed": seed,
               "limit": None}
        if a.mae:  # pretrain first, then fine-tune from the encoder
            mae = mae_config(config, a.mae, out.with_name(out.name + "-mae"))
            job["mae"] = mae.to_dict()
            config = TrainConfig.from_dict(dict(config.to_dict(), init=f"{mae.out}/model"))
        jobs.append(dict(job, config=config.to_dict()))

    seeds = [int(s) for s in a.seeds.split(",")]
    for protocol in a.protocol.split(","):
        for seed in seeds:
            if protocol == "loso":
                for spk in a.speakers.split(","):
                    if a.real:
                        add("loso", "real", spk, seed)
                    for share in shares:
                        add("loso", "voices", spk, seed, share)
            elif protocol == "text":
                add("text", "voices-only", "real", seed)
            elif protocol == "official":
                if a.real:
                    add("official", "real", "official", seed)
                for share in shares:
                    add("official", "voices", "official", seed, share)
    return jobs


def borrowed(jobs: list[dict], results: Path) -> list[dict]:
    """The rows of ``real`` jobs that bench/fsdd_speakers.py has already trained under the
    name ``robust`` (the same configuration), named ``real`` here; they are not trained
    again."""
    rows, earlier = [], loso.load_rows(loso.RESULTS / "fsdd_speakers.json")
    for job in jobs:
        if job["recipe"] == "real" and not loso.done(results, job):
            row = loso.earlier_row(job, "robust", earlier)
            if row is not None:
                rows.append(dict(row, recipe="real", borrowed_from="fsdd_speakers.json"))
    return rows


def run(job: dict, real, machine: dict) -> dict:
    """One run: its splits, training and the test on real speakers."""
    config = TrainConfig.from_dict(job["config"])
    if job["protocol"] == "loso":
        split = group_split(real, job["held_out"], job["seed"])
    elif job["protocol"] == "official":
        split = split_manifest(real, None, job["seed"])
    else:  # the voices train and validate; every real clip tests
        voices = from_spec(config.data)
        train_m, valid_m = carve_validation(voices, job["seed"])
        split = (train_m, valid_m, real)
    t0 = time.time()
    mae_seconds = None
    # a job of two trainings holds a lock of its own throughout: each training locks only its
    # own directory, and another process must not start the pretraining while this one
    # fine-tunes
    with run_lock(Path(config.out).parent / ".jobs" / Path(config.out).name) \
            if job.get("mae") else nullcontext():
        if job.get("mae"):
            mae = TrainConfig.from_dict(job["mae"])
            mae_seconds = train(mae, split=split, overwrite=True)["train_seconds"]
            shutil.rmtree(Path(mae.out) / "checkpoints", ignore_errors=True)
        result = train(config, split=split, overwrite=True)
    test = result["test"]
    shutil.rmtree(Path(config.out) / "checkpoints", ignore_errors=True)
    row = {k: job[k] for k in ("protocol", "recipe", "held_out", "seed", "limit", "config")}
    row.update(accuracy=test.get("accuracy"), test_clips=test.get("num_clips"),
               train_seconds=result["train_seconds"], wall_seconds=round(time.time() - t0, 1),
               epochs=result["epochs"], machine=machine)
    if job.get("mae"):
        row.update(mae=job["mae"], mae_seconds=mae_seconds)
    if job["protocol"] == "text":  # how each real speaker fares
        row["per_speaker"] = per_speaker(Path(config.out) / "model", real)
    return row


def per_speaker(model_dir: Path, real) -> dict[str, float]:
    from earmark.evaluate.run import evaluate_model
    from earmark.infer.tagger import load

    tagger = load(model_dir)
    return {g: evaluate_model(tagger, real.subset(lambda it, g=g: it.group == g),
                              progress=False)["accuracy"]
            for g in real.groups()}


def tables(rows: list[dict]) -> str:
    out = []
    loso_rows = [r for r in rows if r["protocol"] == "loso"]
    if loso_rows:
        header = ["recipe", *loso.SPEAKERS, "mean (seeds)", "worst"]
        lines = []
        for name in sorted({r["recipe"] for r in loso_rows}, key=lambda n: n != "real"):
            acc = loso.Loso([r for r in loso_rows if r["recipe"] == name])
            means = acc.speaker_means()
            done = [s for s in loso.SPEAKERS if s in means]
            lines.append([name, *(loso.pct(means.get(s)) for s in loso.SPEAKERS),
                          loso.pm(acc.seed_means(done)) if len(done) == 5 else "-",
                          loso.pct(min(means.values())) if len(done) == 5 else "-"])
        out += ["(a) leave one speaker out: accuracy % on the held-out speaker",
                loso.md_table(header, lines), ""]
    for protocol, title in (("text", "(b) voices only, tested on all 2,500 real clips"),
                            ("official", "(c) the official split with the voices")):
        sel = [r for r in rows if r["protocol"] == protocol]
        if not sel:
            continue
        lines = []
        for name in sorted({r["recipe"] for r in sel}, key=lambda n: (n != "real", n)):
            accs = [r["accuracy"] for r in sel if r["recipe"] == name]
            line = [name, loso.pm(accs), str(len(accs))]
            if protocol == "text":
                speakers = [r["per_speaker"] for r in sel if r["recipe"] == name]
                line.append(", ".join(f"{s} {loso.pct(statistics.fmean(p[s] for p in speakers))}"
                                      for s in loso.SPEAKERS if all(s in p for p in speakers)))
            lines.append(line)
        header = ["recipe", "accuracy %", "seeds"] + (["per speaker"] if protocol == "text"
                                                      else [])
        out += [title, loso.md_table(header, lines), ""]
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> bool:
    """Accuracy on each real speaker: held out (LOSO, real only and with the voices; mean over
    seeds) and voices only, with the 90 % line."""
    series = {}
    for name in sorted({r["recipe"] for r in rows if r["protocol"] == "loso"},
                       key=lambda n: n != "real"):
        means = loso.Loso([r for r in rows if r["protocol"] == "loso"
                           and r["recipe"] == name]).speaker_means()
        series[f"held out, {name}"] = means
    text = [r["per_speaker"] for r in rows if r["protocol"] == "text"]
    if text:
        series["voices only"] = {s: statistics.fmean(p[s] for p in text)
                                 for s in loso.SPEAKERS if all(s in p for p in text)}
    if not series:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, (name, means) in enumerate(series.items()):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(loso.SPEAKERS))]
        ax.bar(xs, [100 * means.get(s, float("nan")) for s in loso.SPEAKERS], width,
               label=name)
    ax.axhline(90, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(loso.SPEAKERS)), loso.SPEAKERS)
    ax.set_ylabel("accuracy on the speaker (%)")
    ax.set_ylim(0, 100)
    ax.set_title("FSDD digits on real speakers, with synthetic voices")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(loso.DEFAULT_DATA))
    p.add_argument("--voices", default=str(HOME / "voices"), help="folder of earmark voices")
    p.add_argument("--protocol", default="loso", help=f"comma list of {', '.join(PROTOCOLS)}")
    p.add_argument("--speakers", default=",".join(loso.SPEAKERS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--share", default=str(RECIPES["voices"]["synthetic_share"]),
                   help="synthetic share of each batch, comma list ('all': one pool)")
    p.add_argument("--real", action=argparse.BooleanOptionalAction, default=True,
                   help="loso, official: also the real-only runs (those bench/fsdd_speakers.py "
                        "has already made are read from its results, not trained again)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="a training option on top of every run's recipe (its name shows it)")
    p.add_argument("--mae", type=int, default=0, metavar="EPOCHS",
                   help="pretrain each run's encoder as a masked autoencoder for EPOCHS "
                        "epochs on its training audio (real and synthetic, never the held-out "
                        "speaker), then fine-tune from it (its name shows +maeEPOCHS)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--max-minutes", type=float, default=30.0, help="per run")
    p.add_argument("--final", action="store_true", help="(d) alone: the README's model")
    p.add_argument("--table", action="store_true", help="tables from the saved rows")
    p.add_argument("--name", default="fsdd_voices", help="results file stem")
    a = p.parse_args(argv)
    results = loso.RESULTS / f"{a.name}.json"
    png = loso.RESULTS / f"{a.name}.png"
    spec = f"fsdd:{Path(a.data).resolve()}"
    if a.table:  # with every real run bench/fsdd_speakers.py has for these speakers and seeds
        a.real, a.protocol = True, ",".join(PROTOCOLS)
        rows = loso.load_rows(results) + borrowed(
            jobs_for(a, spec, f"manifest:{Path(a.voices).resolve() / 'manifest.csv'}"), results)
        print(tables(rows))
        if plot(rows, png):
            print(f"wrote {png}")
        return 0
    bad = [x for x in a.protocol.split(",") if x not in PROTOCOLS]
    if bad:
        p.error(f"--protocol: unknown {', '.join(bad)}; known: {', '.join(PROTOCOLS)}")
    data = Path(a.data).resolve()
    if not data.is_dir():
        print(f"FSDD not found at {data}", file=sys.stderr)
        return 2
    real = from_spec(spec)
    voices_spec = f"manifest:{make_voices(Path(a.voices).resolve())}"
    torch.set_num_threads(a.threads)
    if a.final:
        a.protocol, a.seeds = "official", "0"
    jobs = jobs_for(a, spec, voices_spec)
    machine = loso.machine_info(torch.get_num_threads())
    earlier = borrowed(jobs, results)
    have = {(r["held_out"], r["seed"]) for r in earlier}
    todo = [j for j in jobs if not loso.done(results, j)
            and not (j["recipe"] == "real" and (j["held_out"], j["seed"]) in have)]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} done; matmul "
          f"{machine['matmul_gflops']:.1f} GFLOP/s on {machine['torch_threads']} threads",
          flush=True)
    loso.run_jobs(todo, results, lambda job: run(job, real, machine),
                  lambda job: f"{job['protocol']} {job['recipe']} {job['held_out']} "
                              f"seed {job['seed']}")
    if a.final:
        job = jobs[0]
        model = Path(job["config"]["out"]) / "model"
        target = HOME / "model"
        if model.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(model, target)
            print(f"the model: {target}")
    rows = loso.load_rows(results) + earlier
    print(tables(rows))
    if plot(rows, png):
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
