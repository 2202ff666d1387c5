"""The generator: every word spoken by every voice found, in several renditions, by every
pseudo-speaker of each voice; clips, ``manifest.csv`` and ``voices.json`` written to a folder.

Work is split into jobs of one voice and one word (all its renditions and pseudo-speakers), so
an engine that loads a model does it once per job. Every random draw comes from the seed, the
group, the word and the rendition's number, never from the order in which workers finish:
the same seed gives the same files with any number of workers. A clip already on disk is
kept, so a rerun continues where a stopped one ended; files are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import re
import sys
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from earmark.audio.io import write_audio
from earmark.errors import EarmarkError
from earmark.files import write_json, write_text
from earmark.voices.engine import Engine, EngineMissing, Take, VoiceFailed
from earmark.voices.festival import Festival
from earmark.voices.flite import Flite
from earmark.voices.piper import Piper
from earmark.voices.shaping import set_level, shift_pitch, to_speaker, trim

# every engine earmark can drive, by name; none of them uses espeak-ng (a test checks it)
ENGINES: dict[str, type] = {"festival": Festival, "flite": Flite, "piper": Piper}

# vocal-tract factors of the pseudo-speakers made from each voice (formants scaled by this)
PSEUDO_SPEAKERS = (0.88, 0.94, 1.07, 1.14)


@dataclass(frozen=True)
class Renditions:
    """How each voice says each word: ``count`` renditions, their styles taken in turn from
    ``styles`` (those the engine can speak), the duration factor drawn log-uniformly from
    ``duration``, the pitch from +-``semitones``, the level (RMS, dBFS) from ``level_db``."""

    count: int = 3
    styles: tuple[str, ...] = ("plain", "question", "carrier")
    duration: tuple[float, float] = (0.85, 1.2)
    semitones: float = 2.0
    level_db: tuple[float, float] = (-28.0, -18.0)


@dataclass(frozen=True)
class Clip:
    path: str  # relative to OUT
    group: str
    take: Take
    vocal_tract: float
    semitones: float
    level_db: float


@dataclass
class Job:
    engine: str
    voice: str
    word: str
    clips: list[Clip]
    out: str
    sample_rate: int
    seed: int


@dataclass
class JobResult:
    written: int = 0
    existing: int = 0
    failed: list[str] = field(default_factory=list)


def parse_words(spec: str | Path | Sequence[str]) -> list[str]:
    """Words from a list, a comma-separated string or a text file (one word or phrase a line).

    >>> parse_words("zero, one,two")
    ['zero', 'one', 'two']
    """
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise EarmarkError(f"{path}: unreadable word list ({err})") from None
            words = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
            where = str(path)
        else:
            words, where = [w.strip() for w in str(spec).split(",") if w.strip()], "WORDS"
    else:
        words, where = [str(w).strip() for w in spec if str(w).strip()], "words"
    if not words:
        raise EarmarkError(f"{where}: no words to speak")
    seen = set()
    for word in words:
        if word.lower() in seen:
            raise EarmarkError(f"{where}: {word!r} is listed twice")
        seen.add(word.lower())
    return words


def parse_labels(spec: str | Path | dict | None, words: list[str]) -> dict[str, str]:
    """Each word's label: the word itself unless ``spec`` maps it (``"zero=0,one=1"``, a
    file of ``word=label`` lines, or a dict).

    >>> parse_labels("zero=0, one=1", ["zero", "one", "two"])
    {'zero': '0', 'one': '1', 'two': 'two'}
    """
    mapping: dict[str, str] = {}
    if isinstance(spec, dict):
        mapping = {str(k).strip(): str(v).strip() for k, v in spec.items()}
        where = "labels"
    elif spec is not None:
        path = Path(spec)
        text = path.read_text(encoding="utf-8") if path.is_file() else str(spec)
        where = str(path) if path.is_file() else "--labels"
        for part in re.split(r"[\n,]", text):
            if not part.strip() or part.strip().startswith("#"):
                continue
            word, sep, label = part.partition("=")
            if not sep or not word.strip() or not label.strip():
                raise EarmarkError(f"{where}: {part.strip()!r} is not WORD=LABEL")
            mapping[word.strip()] = label.strip()
    unknown = [w for w in mapping if w not in words]
    if unknown:
        raise EarmarkError(f"{where}: {unknown[0]!r} is not one of the words")
    labels = {w: mapping.get(w, w) for w in words}
    for word, label in labels.items():
        if "," in label or ";" in label:
            raise EarmarkError(f"label {label!r} of {word!r}: a label holds no ',' or ';' "
                               "(they separate labels in a manifest)")
    return labels


def find_engines(names: Sequence[str] | None = None) -> tuple[dict[str, Engine], dict[str, str]]:
    """The engines that run here, and why each other one does not.

    ``names``: the engines asked for (default: all of :data:`ENGINES`); one of those that
    cannot run raises :class:`EngineMissing` naming what provides it.
    """
    asked = list(ENGINES) if names is None else list(names)
    for name in asked:
        if name not in ENGINES:
            raise EngineMissing(f"{name}: no such text-to-speech engine "
                                f"(known: {', '.join(ENGINES)})")
    found, missing = {}, {}
    for name in asked:
        engine = ENGINES[name]()
        reason = engine.missing()
        if reason is None:
            found[name] = engine
        elif names is not None:
            raise EngineMissing(reason)
        else:
            missing[name] = reason
    if not found:
        raise EngineMissing("no offline text-to-speech engine found: " + "; ".join(
            missing.values()))
    return found, missing


def _slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower() or "word"


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in keys)])


def _group(engine: str, voice: str, vocal_tract: float) -> str:
    return f"{engine}-{voice}" + ("" if vocal_tract == 1.0 else f"-vt{vocal_tract:.2f}")


def _plan(engine: str, styles: tuple[str, ...], voice: str, word: str, slug: str,
          renditions: Renditions, pseudo: tuple[float, ...], seed: int) -> list[Clip]:
    usable = [s for s in renditions.styles if s in styles]
    clips = []
    for vt in (1.0, *pseudo):
        group = _group(engine, voice, vt)
        for r in range(renditions.count):
            rng = _rng(seed, group, word, r)
            lo, hi = renditions.duration
            duration = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            semitones = rng.uniform(-renditions.semitones, renditions.semitones)
            level = rng.uniform(*renditions.level_db)
            # the pseudo-speaker's resampling shortens the take by vt: spoken vt times slower
            take = Take(word, usable[r % len(usable)], duration * vt, 2 ** (semitones / 12))
            clips.append(Clip(f"{group}/{slug}_{r}.wav", group, take, vt, semitones, level))
    return clips


def _run_job(job: Job) -> JobResult:
    result = JobResult()
    out = Path(job.out)
    todo = [c for c in job.clips if not (out / c.path).exists()]
    result.existing = len(job.clips) - len(todo)
    if not todo:
        return result
    engine = ENGINES[job.engine]()
    # all of the job's takes, so that an engine that draws noise draws the same as ever
    spoken = engine.speak(job.voice, [c.take for c in job.clips],
                          seed=zlib.crc32(f"{job.seed}|{job.voice}|{job.word}".encode()))
    for clip, speech in zip(job.clips, spoken):
        if clip not in todo:
            continue
        if isinstance(speech, VoiceFailed):
            result.failed.append(f"{clip.path}: {speech}")
            continue
        try:
            wave = np.asarray(speech.wave, dtype=np.float32)
            if not speech.pitched:
                wave = shift_pitch(wave, clip.semitones)
            wave = trim(to_speaker(wave, speech.sample_rate, clip.vocal_tract,
                                   job.sample_rate), job.sample_rate)
            if len(wave) < job.sample_rate // 20 or not np.isfinite(wave).all():
                raise VoiceFailed("silent or broken audio")
            write_audio(out / clip.path, set_level(wave, clip.level_db), job.sample_rate,
                        subtype="PCM_16")
            result.written += 1
        except Exception as err:  # this clip fails alone; the rest go on
            result.failed.append(f"{clip.path}: {job.engine} voice {job.voice} saying "
                                 f"{clip.take.spoken()!r}: {err}")
    return result


def speak_words(words: str | Path | Sequence[str], out: str | Path,
                labels: str | Path | dict | None = None,
                engines: Sequence[str] | None = None, voices: Sequence[str] | None = None,
                renditions: Renditions | None = None,
                pseudo_speakers: Sequence[float] = PSEUDO_SPEAKERS,
                sample_rate: int = 8000, seed: int = 0, workers: int = 1,
                progress: bool = False) -> dict:
    """Speak every word with every offline voice found, and write the clips, ``manifest.csv``
    (``path,labels,group``: use it as ``--data manifest:OUT/manifest.csv``; ``group`` names
    the voice, a pseudo-speaker being a voice of its own) and ``voices.json``.

    ``engines``: names from :data:`ENGINES` (default: every one that runs here);
    ``voices``: keep only these (``"slt"`` or ``"flite-slt"``); ``pseudo_speakers``:
    vocal-tract factors of the extra voices made from each voice (``()``: none). Returns a
    report: the voices and groups, clips written, kept from an earlier run and failed
    (each with its reason), and the engines missing here.

    >>> report = speak_words("yes,no", "spoken", engines=["flite"], voices=["slt"],
    ...                      renditions=Renditions(count=1), pseudo_speakers=[1.1])
    >>> report["groups"], report["written"], report["failed"]
    (['flite-slt', 'flite-slt-vt1.10'], 4, [])
    >>> print(Path("spoken/manifest.csv").read_text().splitlines()[1])
    flite-slt/yes_0.wav,yes,flite-slt
    """
    started = time.monotonic()
    renditions = renditions or Renditions()
    if renditions.count < 1:
        raise EarmarkError(f"renditions: count must be at least 1, got {renditions.count}")
    if sample_rate < 4000:
        raise EarmarkError(f"sample rate {sample_rate} Hz is too low for speech")
    pseudo = tuple(float(v) for v in pseudo_speakers)
    for vt in pseudo:
        if not 0.5 <= vt <= 2.0 or vt == 1.0:
            raise EarmarkError(f"pseudo-speaker vocal-tract factor {vt}: expected 0.5-2.0, "
                               "not 1 (the voice itself)")
    words = parse_words(words)
    label_of = parse_labels(labels, words)
    found, missing = find_engines(engines)
    out = Path(out)

    base = [(name, v) for name, engine in found.items() for v in engine.voices()]
    if voices is not None:
        wanted = set(voices)
        unknown = wanted - {v for _, v in base} - {f"{e}-{v}" for e, v in base}
        if unknown:
            raise EarmarkError(f"voice {sorted(unknown)[0]!r} not found (found: "
                               + ", ".join(f"{e}-{v}" for e, v in base) + ")")
        base = [(e, v) for e, v in base if v in wanted or f"{e}-{v}" in wanted]
    if not base:
        raise EngineMissing("no voices found: " + ", ".join(found) + " list none")

    slugs, used = {}, set()
    for i, word in enumerate(words):
        slug = _slug(word)
        slugs[word] = slug if slug not in used else f"{slug}_{i}"
        used.add(slugs[word])
    jobs = [Job(e, v, w, _plan(e, found[e].styles, v, w, slugs[w], renditions, pseudo, seed),
                str(out), sample_rate, seed) for e, v in base for w in words]

    from tqdm.auto import tqdm

    total = JobResult()
    bar = tqdm(total=sum(len(j.clips) for j in jobs), disable=not progress, unit="clip",
               file=sys.stderr, desc="voices")
    # spawned, not forked: a fork of a process whose torch or onnxruntime threads ran can hang
    pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 1 else None)
    try:
        results = pool.map(_run_job, jobs) if pool else map(_run_job, jobs)
        for job, result in zip(jobs, results):
            total.written += result.written
            total.existing += result.existing
            total.failed += result.failed
            bar.update(len(job.clips))
    finally:
        bar.close()
        if pool:
            pool.shutdown()

    rows = [(c.path, label_of[j.word], c.group) for j in jobs for c in j.clips
            if (out / c.path).exists()]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "labels", "group"])
    writer.writerows(rows)
    write_text(out / "manifest.csv", text.getvalue())

    groups = sorted({c.group for j in jobs for c in j.clips})
    failed_groups = {f.split("/", 1)[0] for f in total.failed}
    report = {
        "out": str(out), "manifest": str(out / "manifest.csv"),
        "voices": [f"{e}-{v}" for e, v in base], "groups": groups,
        "clips": len(rows), "written": total.written, "existing": total.existing,
        "failed": total.failed, "missing_engines": missing,
        "seconds": round(time.monotonic() - started, 1)}
    write_json(out / "voices.json", {
        "words": words, "labels": label_of, "seed": seed, "sample_rate": sample_rate,
        "engines": {name: {"programs": list(e.programs), "styles": list(e.styles),
                           "voices": [v for n, v in base if n == name]}
                    for name, e in found.items()},
        "missing_engines": missing,
        "renditions": asdict(renditions), "pseudo_speakers": list(pseudo),
        "groups": [{"group": g, "failed": g in failed_groups} for g in groups],
        "counts": {"voices": len(base), "groups": len(groups), "words": len(words),
                   "clips": len(rows), "failed": len(total.failed)}})
    return report
