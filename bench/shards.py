"""Shards against a folder of files: writing, reading, training headroom and reader memory.

    python bench/shards.py [--clips 20000] [--clip-seconds 1] [--read-clips 4000] [--repeats 3]

1. ``earmark synth`` makes ``--clips`` clips (kept in bench/results/shards-work/ and reused
   when the same settings are asked again).
2. ``earmark shard`` writes them as tar shards (``--shard-mb``, ``--workers``), once with FLAC
   and once with WAV samples (``--format``): clips/s and MB/s of shards written.
3. One loader, as one DataLoader worker runs it (this process, 1 thread), reads, decodes,
   fits and computes the log-mel front end of ``--read-clips`` training clips: from the folder
   (one WAV file per clip, as ``earmark synth`` writes them, and the same clips as FLAC files,
   in random order, as the map-style ``ClipDataset`` reads them) and from each shard set (``ShardStream``: shards in order,
   shuffle buffer), alternated ``--repeats`` times in
   one run; medians and their ratio; with the files dropped from the page cache before each
   read (``cold``: as from a disk or store the machine has not read yet) and kept (``warm``).
   The clock starts after the first ``--buffer`` clips (the shuffle buffer filling once per
   epoch) for both readers. The same again without the front end (``-read``).
4. The training step rate of ``vit-tiny`` on the same clips and of ``htsat-tiny`` on its own
   10 s, 32 kHz input, at 2 threads (random batches, so only the step counts): the loader's
   clips/s over the step's clips/s is the headroom one worker gives.
5. The loader's resident memory at every shard of a full pass: first against last.
6. On paper: AudioSet-2M as FLAC shards, and the loader workers per GPU that the measured
   decode rate implies for 8 GPUs training HTS-AT (see BENCHMARKS.md for the assumptions).

Writes bench/results/shards.json and prints the figures as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import earmark  # noqa: E402
from earmark.data.dataset import ClipDataset  # noqa: E402
from earmark.data.shards import load as load_shards  # noqa: E402
from earmark.data.shards import write_shards  # noqa: E402
from earmark.data.sources import from_spec  # noqa: E402
from earmark.data.stream import ShardStream  # noqa: E402
from earmark.data.synth import synthesize  # noqa: E402
from earmark.models.registry import create_model  # noqa: E402
from earmark.profile import matmul_gflops  # noqa: E402

RESULTS = HERE / "results"
CLASSES = 8  # earmark synth's clip classes
BATCH = 32
AUDIOSET_HOURS = 5800  # AudioSet-2M, about 2 million 10 s clips (the figure)
HTSAT_RATE = 32000
FORMATS = ("flac", "wav")  # the audio of the shards: earmark shard --format


def rss_mb() -> float:
    """This process's resident memory in MB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_clips(work: Path, clips: int, clip_seconds: float, sample_rate: int) -> Path:
    root = work / "synth"
    per_class = math.ceil(clips / CLASSES)
    meta = root / "synth.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        if (m["clips_per_class"], m["clip_seconds"], m["sample_rate"]) == (
                per_class, clip_seconds, sample_rate):
            return root
        shutil.rmtree(root)
    t0 = time.perf_counter()
    synthesize(root, clips_per_class=per_class, clip_seconds=clip_seconds, soundscapes=0,
               sample_rate=sample_rate, seed=0)
    print(f"synth: {per_class * CLASSES} clips in {time.perf_counter() - t0:.0f} s")
    return root


def write(manifest, out: Path, shard_mb: float, workers: int, audio_format: str) -> dict:
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    index = write_shards(manifest, out, shard_size=int(shard_mb * 2 ** 20),
                         workers=workers, audio_format=audio_format)
    seconds = time.perf_counter() - t0
    size = sum(s["bytes"] for s in index["shards"])
    return {"clips": index["clips"], "shards": len(index["shards"]), "seconds": round(seconds, 1),
            "clips_per_s": round(index["clips"] / seconds, 1),
            "mb_per_s": round(size / 2 ** 20 / seconds, 1), "bytes": size,
            "hours": index["hours"], "workers": workers, "audio": audio_format}


def evict(paths) -> None:
    """Drop the files from the page cache (as if they lay on another machine's disk)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_rate(items, frontend, n: int, skip: int) -> float:
    """Clips/s of reading, fitting and the front end over ``n`` of ``items`` after the first
    ``skip`` (the shuffle buffer's filling, which an epoch pays once)."""
    batch, done, t0 = [], 0, None
    for wave, _ in items:
        if done == skip:
            t0 = time.perf_counter()
        batch.append(wave)
        done += 1
        if len(batch) == BATCH:
            if frontend is not None:
                with torch.no_grad():
                    frontend(torch.stack(batch))
            batch = []
        if done == skip + n:
            break
    return (done - skip) / (time.perf_counter() - t0)


def flac_copy(manifest, out: Path, workers: int):
    """The clips as a folder of FLAC files (kept and reused), as a manifest."""
    from concurrent.futures import ProcessPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    targets = [out / f"{i:06d}.flac" for i in range(len(manifest))]
    todo = [(it.path, str(t)) for it, t in zip(manifest.items, targets) if not t.is_file()]
    if todo:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_to_flac, todo, chunksize=64))
    return replace(manifest, items=[replace(it, path=str(t))
                                    for it, t in zip(manifest.items, targets)])


def _to_flac(job: tuple[str, str]) -> None:
    import soundfile as sf

    x, sr = sf.read(job[0], dtype="int16")
    tmp = job[1] + ".tmp"
    sf.write(tmp, x, sr, format="FLAC", subtype="PCM_16")
    os.replace(tmp, job[1])


def folder_items(ds: ClipDataset, seed: int):
    for i in np.random.default_rng(seed).permutation(len(ds)):
        yield ds[int(i)]


def step_rate(name: str, clip_seconds: float | None, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    kw = {"clip_seconds": clip_seconds} if clip_seconds else {}
    model = create_model(name, CLASSES, **kw).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, round(model.clip_seconds * model.sample_rate)) * 0.1
    y = torch.nn.functional.one_hot(torch.arange(BATCH) % CLASSES, CLASSES).float()
    times = []
    for k in range(steps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    torch.set_num_threads(1)
    return {"model": name, "clip_seconds": model.clip_seconds, "sample_rate": model.sample_rate,
            "step_s": round(step, 3), "clips_per_s": round(BATCH / step, 1),
            "audio_s_per_s": round(BATCH * model.clip_seconds / step, 1), "threads": threads}


def memory_pass(stream: ShardStream) -> dict:
    """Resident memory at each new shard of a full pass over the shards, in reading order."""
    per_shard = {k: len(c) for k, c in enumerate(stream.per_shard) if len(c)}
    marks, seen, clips = [], 0, 0
    bounds = np.cumsum([per_shard[k] for k in sorted(per_shard)])
    stream.buffer = 1  # reading order, so clip counts tell the shard
    for _ in stream.slot_items(0, 1, 0, 1, epoch=0):
        clips += 1
        if seen < len(bounds) and clips == bounds[seen]:
            marks.append(round(rss_mb(), 1))
            seen += 1
        if clips == stream.total:
            break
    return {"rss_mb_per_shard": marks, "first_mb": marks[0], "last_mb": marks[-1],
            "growth": round(marks[-1] / marks[0] - 1, 4), "clips": clips}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=20000)
    p.add_argument("--clip-seconds", type=float, default=1.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--shard-mb", type=float, default=64.0,
                   help="shard size (earmark shard's default is 512 MB; smaller here so that "
                        "the bench's set has many shards)")
    p.add_argument("--workers", type=int, default=2, help="processes writing the shards")
    p.add_argument("--read-clips", type=int, default=4000, help="clips per read measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--buffer", type=int, default=1000, help="shuffle buffer of the shard reader")
    p.add_argument("--steps", type=int, default=10, help="training steps timed per model")
    p.add_argument("--threads", type=int, default=2, help="threads of the training steps")
    p.add_argument("--work", default=str(RESULTS / "shards-work"))
    p.add_argument("--name", default="shards")
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # one loader worker is one process with one thread
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    root = make_clips(work, a.clips, a.clip_seconds, a.sample_rate)
    manifest = from_spec(f"synth:{root}")
    manifest = manifest.subset(lambda it: "/clips/" in it.path)
    print(f"{len(manifest)} clips of {a.clip_seconds} s at {a.sample_rate} Hz")

    writing = {}
    for fmt in FORMATS:
        writing[fmt] = w = write(manifest, work / f"shards-{fmt}", a.shard_mb, a.workers, fmt)
        print(f"shard {fmt}: {w['clips']} clips in {w['seconds']} s ({w['clips_per_s']} "
              f"clips/s, {w['mb_per_s']} MB/s, {w['shards']} shards)")

    shards = {fmt: load_shards(str(work / f"shards-{fmt}")) for fmt in FORMATS}
    frontend = create_model("vit-tiny", CLASSES, clip_seconds=a.clip_seconds).frontend.eval()
    folders = {"folder": ClipDataset(manifest, a.sample_rate, a.clip_seconds, train=True,
                                     fit="repeat"),
               "folder-flac": ClipDataset(flac_copy(manifest, work / "flac-files", a.workers),
                                          a.sample_rate, a.clip_seconds, train=True,
                                          fit="repeat")}
    streams = {fmt: ShardStream(m, a.sample_rate, a.clip_seconds, batch_size=BATCH,
                                fit="repeat", seed=0, buffer=a.buffer, slots=(0, 1))
               for fmt, m in shards.items()}
    skip = min(a.buffer, len(manifest) // 4)
    n = min(a.read_clips, len(manifest) - skip)
    paths = {**{k: [it.path for it in ds.manifest.items] for k, ds in folders.items()},
             **{fmt: [s["path"] for s in m.meta["shards"]] for fmt, m in shards.items()}}
    reading = {"clips": n, "after": skip, "buffer": a.buffer}
    # "cold"/"warm": read, decode, fit and front end; "...-read": without the front end
    for case in ("cold", "warm", "cold-read", "warm-read"):
        rates = {kind: [] for kind in paths}
        for r in range(a.repeats):  # alternated, so drifts of a shared machine hit all
            for kind in paths:
                if case.startswith("cold"):
                    evict(paths[kind])
                items = (folder_items(folders[kind], r) if kind in folders
                         else streams[kind].slot_items(0, 1, 0, 1, epoch=r))
                rates[kind].append(read_rate(items, None if case.endswith("read") else frontend,
                                             n, skip))
            print(f"{case} {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
                  + " clips/s")
        got = {k: round(statistics.median(v), 1) for k, v in rates.items()}
        got["runs"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
        for fmt in FORMATS:
            got[f"{fmt}_over_folder"] = round(got[fmt] / got["folder"], 2)
        got["flac_over_folder_flac"] = round(got["flac"] / got["folder-flac"], 2)
        reading[case] = got

    training = [step_rate("vit-tiny", a.clip_seconds, a.steps, a.threads),
                step_rate("htsat-tiny", None, a.steps, a.threads)]
    # the headroom from the warm-cache rate: the lower of the two (a local disk's page cache
    # serves the folder best; from a cold or remote store shards gain)
    loader_audio = min(reading["warm"]["flac"], reading["cold"]["flac"]) * a.clip_seconds
    for t in training:
        # the headroom of one worker: the seconds of audio it delivers per second over those
        # the step consumes (vit-tiny takes the clips as they are; htsat-tiny 10 s at 32 kHz,
        # which the loader would also resample: an upper bound there)
        t["one_worker_headroom"] = round(loader_audio / t["audio_s_per_s"], 2)
        print(f"train {t['model']}: {t['clips_per_s']} clips/s of {t['clip_seconds']} s "
              f"({t['step_s']} s/step); one loader worker: {t['one_worker_headroom']}x")
    memory = memory_pass(ShardStream(shards["flac"], a.sample_rate, a.clip_seconds, batch_size=BATCH,
                                     seed=0, slots=(0, 1), train=False))
    print(f"memory: {memory['first_mb']} MB at the first shard, {memory['last_mb']} MB at the "
          f"last ({memory['growth']:+.1%})")

    # on paper: AudioSet-2M as FLAC shards, and loader workers per GPU for HTS-AT
    bytes_per_audio_s = writing["flac"]["bytes"] / (writing["flac"]["hours"] * 3600)
    pcm_bytes_per_s = 2 * a.sample_rate
    flac_ratio = bytes_per_audio_s / pcm_bytes_per_s
    audioset_pcm = AUDIOSET_HOURS * 3600 * HTSAT_RATE * 2
    worker_audio_s = loader_audio * a.sample_rate / HTSAT_RATE  # decode cost ~ samples
    estimate = {"audioset_pcm16_tb": round(audioset_pcm / 1e12, 2),
                "flac_ratio_measured": round(flac_ratio, 3),
                "audioset_flac_tb_at_measured_ratio": round(audioset_pcm * flac_ratio / 1e12, 2),
                "worker_audio_s_per_s_at_32k": round(worker_audio_s, 1)}
    result = {"earmark": earmark.__version__, "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(),
              "cpus": torch.get_num_threads(), "matmul_gflops_1thread": matmul_gflops(),
              "clips": len(manifest), "clip_seconds": a.clip_seconds,
              "sample_rate": a.sample_rate, "writing": writing, "reading": reading,
              "training": training, "memory": memory, "estimate": estimate}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{a.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}\n")
    print("| measure | figure |\n| --- | --- |")
    for fmt, w in writing.items():
        print(f"| shard writing, {fmt} ({a.workers} processes) | {w['clips_per_s']} clips/s, "
              f"{w['mb_per_s']} MB/s |")
    for case in ("cold", "warm", "cold-read", "warm-read"):
        r = reading[case]
        what = "read + decode + fit" + ("" if case.endswith("read") else " + front end")
        print(f"| one loader, {what}, {case.split('-')[0]} page cache: WAV folder / FLAC folder "
              f"/ FLAC shards / WAV shards (medians of {a.repeats}) | {r['folder']} / "
              f"{r['folder-flac']} / {r['flac']} / {r['wav']} clips/s (shards over the WAV "
              f"folder: {r['flac_over_folder']}x, {r['wav_over_folder']}x; FLAC shards over "
              f"the FLAC folder: {r['flac_over_folder_flac']}x) |")
    for t in training:
        print(f"| {t['model']} training, {a.threads} threads | {t['clips_per_s']} clips/s; one "
              f"loader worker: {t['one_worker_headroom']}x |")
    print(f"| loader memory, first -> last shard | {memory['first_mb']} -> {memory['last_mb']} "
          f"MB ({memory['growth']:+.1%}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
