"""Commands that make or pack data: ``synth``, ``voices``, ``shard`` and ``psl-scores``."""

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

    p = command(sub, "voices", "speak a list of words with every offline text-to-speech voice")
    p.add_argument("words", metavar="WORDS",
                   help="comma-separated words (zero,one,two) or a text file, one a line")
    p.add_argument("out", metavar="OUT", help="folder for the clips, manifest.csv and "
                                             "voices.json; a rerun continues")
    p.add_argument("--labels", default=None, metavar="MAP",
                   help="labels of the words: zero=0,one=1,... or a file of WORD=LABEL lines "
                        "(default: the words)")
    p.add_argument("--engines", default=None, metavar="NAMES",
                   help="comma-separated: festival, flite, piper (default: all found)")
    p.add_argument("--voices", default=None, metavar="NAMES",
                   help="comma-separated voices to keep, e.g. slt,festival-kal_diphone")
    p.add_argument("--renditions", type=int, default=3,
                   help="renditions of each word by each voice (default 3)")
    p.add_argument("--pseudo-speakers", default="0.88,0.94,1.07,1.14", metavar="FACTORS",
                   help="vocal-tract factors of the extra voices made from each voice "
                        "(default 0.88,0.94,1.07,1.14; 'none' for none)")
    p.add_argument("--sample-rate", type=int, default=8000, help="Hz (default 8000, as FSDD)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--workers", type=int, default=1, help="processes that synthesise")
    add_progress(p)
    p.set_defaults(fn=cmd_voices)

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


def cmd_voices(a) -> int:
    from earmark.voices import Renditions, speak_words

    def names(text):
        return None if text is None else [x.strip() for x in text.split(",") if x.strip()]

    try:
        pseudo = ([] if a.pseudo_speakers.strip().lower() == "none"
                  else [float(x) for x in names(a.pseudo_speakers)])
    except ValueError:
        return error(f"--pseudo-speakers {a.pseudo_speakers!r}: expected numbers such as "
                     "0.9,1.1, or none")
    report = speak_words(a.words, a.out, labels=a.labels, engines=names(a.engines),
                         voices=names(a.voices), renditions=Renditions(count=a.renditions),
                         pseudo_speakers=pseudo, sample_rate=a.sample_rate, seed=a.seed,
                         workers=a.workers, progress=progress(a))
    for reason in report["missing_engines"].values():
        print(f"not used: {reason}", file=sys.stderr)
    for f in report["failed"]:
        print(f"failed: {f}", file=sys.stderr)
    print(f"{len(report['voices'])} voices ({', '.join(report['voices'])}), "
          f"{len(report['groups'])} groups with pseudo-speakers; {report['written']} clips "
          f"written, {report['existing']} kept, {len(report['failed'])} failed; "
          f"{report['clips']} in {report['manifest']} (use it as "
          f"--data manifest:{report['manifest']})")
    return 1 if report["failed"] else 0


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
