"""Folder tagging: batched with background decoding against one file at a time.

    python bench/tag_batch.py [--model bench/results/fsdd-robust-run/model] [--repeats 3]

Two sets: the official FSDD test clips (``../shared/data/fsdd``, recordings 0-4 of every
digit and speaker: 250 short clips) and ``--long`` synthetic clips of 10 s. For each, the
files are tagged one at a time (``Tagger.tag``, as ``earmark tag --batch-size 1`` did) and by
:func:`earmark.infer.batch.tag_files` (``--batch-size``, ``--workers``), alternated
``--repeats`` times in one run; files/s (medians) and their ratio, with the machine's matmul
rate. The labels of both ways are compared. Writes bench/results/tag_batch.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fsdd_speakers import machine_info  # noqa: E402
from timing import alternate, medians, wall  # noqa: E402

import earmark  # noqa: E402
from earmark.files import write_json  # noqa: E402
from earmark.infer.batch import DECODE_WORKERS, tag_files  # noqa: E402

RESULTS = HERE / "results"
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "fsdd"


def fsdd_test_clips(root: Path) -> list[Path]:
    recordings = root / "recordings" if (root / "recordings").is_dir() else root
    return sorted(p for p in recordings.glob("*.wav") if int(p.stem.split("_")[2]) < 5)


def long_clips(n: int, seconds: float) -> list[Path]:
    folder = RESULTS / "tag-batch-work" / f"{n}x{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = folder / f"clip{i:03d}.wav"
        if not path.exists():
            sf.write(path, (0.1 * rng.standard_normal(int(seconds * 16000))).astype("float32"),
                     16000, subtype="PCM_16")
        out.append(path)
    return out


def compare(tagger, files: list[Path], repeats: int, batch_size: int, workers: int) -> dict:
    def one():
        return [tagger.tag(f, top_k=5) for f in files]

    def batched():
        return [labels for _, labels in tag_files(tagger, files, 5, batch_size, workers)]

    a, b = one(), batched()  # warm up, and the labels of both ways
    same = sum([x for x, _ in u] == [x for x, _ in v] for u, v in zip(a, b))
    times = alternate({"one_at_a_time": lambda: wall(one), "batched": lambda: wall(batched)},
                      repeats)
    med = medians(times)
    return {"files": len(files), "same_labels": same,
            "one_at_a_time_files_per_s": round(len(files) / med["one_at_a_time"], 1),
            "batched_files_per_s": round(len(files) / med["batched"], 1),
            "ratio": round(med["one_at_a_time"] / med["batched"], 2),
            "times_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(RESULTS / "fsdd-robust-run" / "model"),
                   help="model directory (python bench/fsdd.py --name fsdd-robust makes it)")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--long", type=int, default=200)
    p.add_argument("--long-seconds", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="default: earmark tag's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not Path(a.model, "config.json").is_file():
        raise SystemExit(f"{a.model}: no model directory; train one with "
                         "python bench/fsdd.py --name fsdd-robust, or give --model")
    tagger = earmark.load(a.model)
    result = {"machine": machine_info(a.threads), "model": a.model,
              "batch_size": a.batch_size, "workers": a.workers or DECODE_WORKERS}
    short = fsdd_test_clips(Path(a.data))
    if short:
        result["fsdd_test"] = compare(tagger, short, a.repeats, a.batch_size, a.workers)
        print("FSDD test clips:", result["fsdd_test"], flush=True)
    else:
        print(f"no FSDD recordings under {a.data}: short clips skipped")
    result["long"] = compare(tagger, long_clips(a.long, a.long_seconds), a.repeats,
                             a.batch_size, a.workers)
    result["long"]["seconds"] = a.long_seconds
    print(f"{a.long} clips of {a.long_seconds:g} s:", result["long"], flush=True)
    write_json(RESULTS / "tag_batch.json", result)


if __name__ == "__main__":
    main()
