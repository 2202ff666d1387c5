"""Commands that make or pack data: ``synth``, ``shard`` and ``psl-scores``."""

from __future__ import annotations

import sys
from pathlib import Path

from earmark.cli.options import add_progress, command, error, progress


def add_commands(sub) -> None:
    p = command(sub, "synth", "write the procedural sound-event data set")
    p.add_argument("out", help="folder to write (clips/, soundscapes/, label tables)")
    p.add_argument("--clips-per-class", type=int, default=30, help="event clips of each class")
    p.add_argument("--clip-seconds", type=float, default=1.0, help="length of an event clip")
    p.add_argument("--soundscapes", type=int, default=20,
                   help="soundscapes with strongly labelled events")
    p.add_argument("--soundscape-seconds", type=float, default=10.0,
                   help="length of a soundscape")
    p.add_argument("--sample-rate", type=int, default=16000, help="Hz")
    p.add_argument("--snr-db", type=float, default=10.0,
                   help="events over the soundscapes' background, in dB")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.set_defaults(fn=cmd_synth)

    p = command(sub, "shard", "write a data set as WebDataset tar shards (FLAC + JSON)")
    p.add_argument("data", metavar="SPEC", help="data SPEC, e.g. esc50:DIR, audioset:DIR")
    p.add_argument("out", help="folder for the shards and index.json; a rerun continues")
    p.add_argument("--shard-size", type=float, default=512.0, metavar="MB",
                   help="megabytes per shard, about (default 512)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="resample to this rate (default: the first file's)")
    p.add_argument("--workers", type=int, default=1, help="processes that decode and encode")
    p.add_argument("--format", dest="audio_format", choices=("flac", "wav"), default="flac",
                   help="audio of each sample: FLAC (default) or 16-bit WAV (larger, cheaper "
                        "to decode for loaders short of CPU)")
    add_progress(p)
    p.set_defaults(fn=cmd_shard)

    p = command(sub, "psl-scores", "store a teacher's scores of crops beside tar shards, "
                                          "for --stage psl --teacher-scores")
    p.add_argument("teacher", metavar="TEACHER", help="model or run directory")
    p.add_argument("--data", required=True, metavar="SPEC", help="shards:DIR")
    p.add_argument("--crop-seconds", type=float, required=True,
                   help="the student's crop: two of its chunks (4 for a SAT with 2 s chunks)")
    p.add_argument("--hop-seconds", type=float, default=None,
                   help="between crop starts (default: half a crop, one chunk)")
    p.add_argument("--batch-size", type=int, default=32, help="crops per teacher forward")
    add_progress(p)
    p.set_defaults(fn=cmd_psl_scores)


def cmd_synth(a) -> int:
    from earmark.data.synth import synthesize

    out = synthesize(a.out, clips_per_class=a.clips_per_class, clip_seconds=a.clip_seconds,
                     soundscapes=a.soundscapes, soundscape_seconds=a.soundscape_seconds,
                     sample_rate=a.sample_rate, snr_db=a.snr_db, seed=a.seed)
    print(f"wrote {out} (use it as --data synth:{out})")
    return 0


def cmd_shard(a) -> int:
    from earmark.data.shards import write_shards
    from earmark.data.sources import from_spec

    index = write_shards(from_spec(a.data), a.out, shard_size=int(a.shard_size * 2 ** 20),
                         sample_rate=a.sample_rate, workers=a.workers,
                         progress=progress(a), audio_format=a.audio_format)
    print(f"wrote {len(index['shards'])} shards, {index['clips']} clips, {index['hours']:.2f} h "
          f"at {index['sample_rate']} Hz to {a.out} (index: {Path(a.out) / 'index.json'})")
    for f in index["failed"]:
        print(f"skipped {f}", file=sys.stderr)
    return 1 if index["failed"] else 0


def cmd_psl_scores(a) -> int:
    from earmark.train.psl import store_teacher_scores

    kind, _, location = a.data.partition(":")
    if kind != "shards":
        return error(f"{a.data}: teacher scores are stored beside tar shards; give "
                     "--data shards:DIR (write them with earmark shard)")
    info = store_teacher_scores(a.teacher, location, a.crop_seconds, a.hop_seconds,
                                batch_size=a.batch_size, progress=progress(a))
    print(f"stored {info['teacher']}'s scores of {info['crop_seconds']} s crops every "
          f"{info['hop_seconds']} s beside {len(info['sidecars'])} shard(s); train with "
          f"--stage psl --teacher-scores --data {a.data}")
    return 0
