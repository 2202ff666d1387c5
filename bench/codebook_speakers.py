"""Why the codebook model loses held-out speakers: which code families carry the digit across
speakers.

    python bench/codebook_speakers.py [--runs bench/results/fsdd_speakers-runs] [--data DIR]

For each codebook run of ``bench/fsdd_speakers.py --recipes codebook`` (one per held-out
speaker), every clip's code histogram (one 1 s view, as the model tags it) is computed per
family. A nearest-class-mean classifier (cosine on the normalised histograms of the training
speakers' clips) then labels the held-out speaker's clips, per family and with all four
families together; beside it the same classifier on the training speakers themselves,
each in turn against the class means of the other three (the codes were fit on all four, so
this is an upper bound for a new voice). The model's own test accuracy is the row's last
column. Writes bench/results/codebook_speakers.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import earmark
from earmark.data.sources import from_spec
from earmark.errors import AudioError
from earmark.models.codebook import FAMILIES, item_chunks

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fsdd import DEFAULT_DATA  # noqa: E402


def histograms(model, manifest) -> tuple[dict[str, torch.Tensor], list[int], list[str]]:
    """Per family (N, D) code shares of each readable item, its class index and group."""
    per_family: dict[str, list[torch.Tensor]] = {name: [] for name in FAMILIES}
    classes, groups = [], []
    index = manifest.label_index()
    for item in manifest.items:
        try:
            chunks = item_chunks(model, item)
        except AudioError as err:
            print(f"skipped {err}", file=sys.stderr)
            continue
        with torch.no_grad():  # the model's own counts, one block of codebook_size per family
            counts = model.histogram(chunks).sum(0).split(model.codebook_size)
        for name, h in zip(FAMILIES, counts):
            per_family[name].append(h / h.sum())
        classes.append(index[item.labels[0]])
        groups.append(item.group)
    return {k: torch.stack(v) for k, v in per_family.items()}, classes, groups


def nearest_mean_accuracy(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor,
                          test: torch.Tensor, n_classes: int) -> float:
    means = torch.stack([x[train & (y == k)].mean(0) for k in range(n_classes)])
    a = torch.nn.functional.normalize(x[test], dim=1)
    b = torch.nn.functional.normalize(means, dim=1)
    return float(((a @ b.T).argmax(1) == y[test]).float().mean())


def analyse(run: Path, data: str) -> dict:
    model = earmark.load(run / "model").model.eval()
    held = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() \
        else {}
    manifest = from_spec(data)
    speaker = run.name.split("-")[1]
    feats, classes, groups = histograms(model, manifest)
    y = torch.tensor(classes)
    g = list(groups)
    n = len(manifest.labels)
    out = {"held_out": speaker, "model_accuracy": held.get("test", {}).get("accuracy")}
    is_held = torch.tensor([s == speaker for s in g])
    others = sorted({s for s in g if s != speaker})
    every = {**feats, "all": torch.cat([feats[k] for k in FAMILIES], 1)}
    for name, x in every.items():
        new_voice = nearest_mean_accuracy(x, y, ~is_held, is_held, n)
        seen = []
        for s in others:  # a training speaker against the class means of the other three
            mine = torch.tensor([v == s for v in g])
            seen.append(nearest_mean_accuracy(x, y, ~is_held & ~mine, mine, n))
        out[name] = {"held_out": round(new_voice, 4),
                     "training_speakers": round(sum(seen) / len(seen), 4)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default=str(HERE / "results" / "fsdd_speakers-runs"))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    a = p.parse_args(argv)
    runs = sorted(Path(a.runs).glob("codebook-*-s0"))
    runs = [r for r in runs if (r / "model" / "config.json").is_file()]
    if not runs:
        print(f"no finished codebook runs under {a.runs}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    rows = [analyse(r, f"fsdd:{a.data}") for r in runs]
    out = HERE / "results" / "codebook_speakers.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    cols = [*FAMILIES, "all"]
    print("| held out | " + " | ".join(cols) + " | model (head) |")
    print("| --- " * (len(cols) + 2) + "|")
    for r in rows:
        cells = [f"{100 * r[c]['held_out']:.1f} ({100 * r[c]['training_speakers']:.1f})"
                 for c in cols]
        acc = r["model_accuracy"]
        print(f"| {r['held_out']} | " + " | ".join(cells) +
              f" | {'-' if acc is None else f'{100 * acc:.1f}'} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
