"""Released checkpoints by name: the table, the cache, the download and its checks.

A name from :data:`RELEASES` goes wherever a model directory does. The first use downloads
the authors' file from their host (once), checks it, converts it (weights only) into a model
directory and caches both; later uses read the cache and need no network.

    >>> import earmark
    >>> tagger = earmark.load("sat-tiny-2s-audioset")  # doctest: +SKIP
    >>> tagger.tag("street.wav", top_k=3)               # doctest: +SKIP

On the command line: ``earmark pull NAME`` fetches and converts one, ``earmark models
--pretrained`` lists them and what is cached, and ``earmark tag NAME FILE`` tags with one.

The cache is ``$EARMARK_HOME`` (default ``~/.cache/earmark``)::

    checkpoints/FILE            the host's file, under the host's name
    checkpoints/FILE.sha256     its sha256 as first downloaded (``sha256sum -c`` reads it)
    models/NAME/                the model directory converted from it
    models/NAME.json            the sha256 of that directory's weights and of its source

Integrity: a row whose size and sha256 are known (pinned) has every download checked against
them. A row without them is trusted on first use: the first download's sha256 is recorded
beside the file, and every later use checks what it reads against that record, the converted
weights included. A file that fails its check is refused and set aside (renamed
``FILE.rejected-TIME``), never used. ``EARMARK_OFFLINE=1`` (``--offline``) never touches the
network: a missing file is an error that says where to get it and where to put it.
``EARMARK_MIRROR=BASE_URL`` fetches ``BASE_URL/FILE`` instead of the host, checked the same.

Reproducing the SAT README's table for its sample (SAT-T, 2 s chunks, top 3 per chunk;
``jkLRith2wcc.wav`` is in the SAT repository's ``samples/``)::

    earmark tag sat-tiny-2s-audioset jkLRith2wcc.wav --chunk 2 --top-k 3

The first rows read Stream 0.9582, Trickle, dribble 0.1661, Boat, Water vehicle 0.1254 for
0-2 s in the SAT README (``tests/test_pretrained.py`` checks them once the file and the
sample are in the cache: ``samples/jkLRith2wcc.wav`` under ``$EARMARK_HOME``).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from earmark.errors import ModelError
from earmark.files import atomic_path, write_json, write_text
from earmark.models.download import (
    DownloadError,
    IntegrityError,
    check_file,
    download,
    file_lock,
    set_aside,
    sha256_of,
)

AUDIOSET_CLASSES = 527


@dataclass(frozen=True)
class Release:
    """One released checkpoint: where it comes from, what it is and how earmark builds it.

    ``args`` are the arguments of the released architecture (checked against the file's
    tensors); ``convert_args`` those the file cannot tell the converter (a SAT's chunk and
    cache lengths). ``url`` is None where the host needs a browser: ``page`` says where a
    person gets the file. ``size``/``sha256`` are None until known (trust on first use).
    """

    name: str
    kind: str  # earmark.models.convert kind
    model: str  # earmark registry name
    file: str  # the host's file name, kept in the cache
    url: str | None
    page: str
    paper_map: float  # AudioSet mAP (%) the paper reports for this model
    evaluation: str  # how that mAP was measured
    licence: str
    args: dict[str, Any] = field(default_factory=dict)
    convert_args: dict[str, Any] = field(default_factory=dict)
    size: int | None = None
    sha256: str | None = None
    labels: str = "AudioSet (527)"

    @property
    def pinned(self) -> bool:
        """Whether the table holds the file's sha256 (else it is trusted on first use)."""
        return self.sha256 is not None


# ---- the table ------------------------------------------------------------------------------
#
# SAT and its full-context ViTs: file names and URLs from the official code, RicherMans/SAT
# models/audiotransformer.py (the pretrained_url of audiotransformer_{tiny,small,base} and
# SAT_{T,S,B}_{2s,1s}); they sit in Zenodo record 7964975. Pooling, chunk (target_length) and
# cache lengths are those functions' arguments. mAPs: paper 003, Table 1 (full context, 10 s)
# and Table 2 (SAT, chunks of the stated delay averaged over each 10 s clip). Zenodo states
# md5 sums, not sha256: these rows are trusted on first use. Licence: the record's own is not
# quoted in the code; the code is GPL-3.0.
_ZENODO = "https://zenodo.org/record/7964975/files/{}?download=1"
_SAT_PAGE = "https://zenodo.org/record/7964975"
_SAT_LICENCE = "see Zenodo record 7964975 (code: GPL-3.0)"


def _sat(name: str, model: str, file: str, paper_map: float, evaluation: str,
         pooling: str, **convert_args) -> Release:
    kind = "sat-official" if model.startswith("sat-") else "vit-official"
    return Release(name=name, kind=kind, model=model, file=file, url=_ZENODO.format(file),
                   page=_SAT_PAGE, paper_map=paper_map, evaluation=evaluation,
                   licence=_SAT_LICENCE, args={"pooling": pooling}, convert_args=convert_args)


# how each mAP was measured, with the paper by its title (papers/ holds it as 003)
_FULL = "Streaming Audio Transformers for Online Audio Tagging, Table 1: full context, 10 s"
_DELAY2 = "Streaming Audio Transformers for Online Audio Tagging, Table 2: 2 s delay"
_DELAY1 = "Streaming Audio Transformers for Online Audio Tagging, Table 2: 1 s delay"

_TABLE = (
    _sat("vit-tiny-audioset", "vit-tiny", "audiotransformer_tiny_mAP_44_15.pt", 44.2, _FULL,
         "mean"),
    # audiotransformer_small leaves AudioTransformer's default pooling, 'token'
    _sat("vit-small-audioset", "vit-small", "audiotransformer_small_mAP_45_68.pt", 45.7, _FULL,
         "token"),
    _sat("vit-base-audioset", "vit-base", "audiotransformer_base_mAP_47_40.pt", 47.4, _FULL,
         "mean"),
    _sat("sat-tiny-2s-audioset", "sat-tiny", "SAT_T_stream2s_mAP_43_34.pt", 43.3, _DELAY2,
         "mean", chunk_seconds=2.0),
    _sat("sat-tiny-1s-audioset", "sat-tiny", "SAT_T_stream1s_mAP_40_11.pt", 40.1, _DELAY1,
         "mean", chunk_seconds=1.0),
    # SAT_S_2s and SAT_S_1s set pooling='token' (the official code's comment says so)
    _sat("sat-small-2s-audioset", "sat-small", "SAT_S_stream2s_mAP_43_37.pt", 43.4, _DELAY2,
         "token", chunk_seconds=2.0),
    # SAT_S_1s is built with target_length=192 and cache_length=192 (a 2 s chunk and cache,
    # which its position embeddings cover) and was trained so (config/sat/balanced_sat_s_1s
    # names the model with no arguments); it is evaluated in 1 s chunks
    _sat("sat-small-1s-audioset", "sat-small", "SAT_S_stream1s_mAP_40_55.pt", 40.2, _DELAY1,
         "token", chunk_seconds=1.0, target_length=192, cache_length=192),
    _sat("sat-base-2s-audioset", "sat-base", "SAT_B_stream2s_mAP_45_29.pt", 45.1, _DELAY2,
         "mean", chunk_seconds=2.0),
    _sat("sat-base-1s-audioset", "sat-base", "SAT_B_stream1s_mAP_41_37.pt", 41.4, _DELAY1,
         "mean", chunk_seconds=1.0),
    # HTS-AT (RetroCirce/HTS-Audio-Transformer): its README links the checkpoints in a Google
    # Drive folder, which needs a browser; HTSAT_AudioSet_Saved_1.ckpt is the single AudioSet
    # model (Saved_1 to 6 are the ensemble's). mAP: paper 002, "a new SOTA mAP 0.471 in a
    # single model". Licence: the repository's, MIT.
    Release(name="htsat-audioset", kind="htsat-official", model="htsat",
            file="HTSAT_AudioSet_Saved_1.ckpt", url=None,
            page="https://drive.google.com/drive/folders/1f5VYMk0uos_YnuBshgmaTVioXbs7Kmz6",
            paper_map=47.1, evaluation="HTS-AT (ICASSP 2022): full context, 10 s, single model",
            licence="MIT (repository RetroCirce/HTS-Audio-Transformer)"),
)

RELEASES: dict[str, Release] = {r.name: r for r in _TABLE}

# the SAT README's sample for the check of sat-tiny-2s-audioset (RicherMans/SAT, samples/)
SAT_SAMPLE = "jkLRith2wcc.wav"
SAT_SAMPLE_URL = "https://github.com/RicherMans/SAT/raw/main/samples/jkLRith2wcc.wav"


def list_pretrained() -> list[str]:
    """The names of the released checkpoints earmark knows.

    >>> "sat-tiny-2s-audioset" in list_pretrained()
    True
    """
    return list(RELEASES)


def release(name: str) -> Release:
    """The table's row for ``name``; a :class:`ModelError` with the closest names otherwise."""
    if name not in RELEASES:
        close = difflib.get_close_matches(name, RELEASES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"{name}: no released model of that name{hint} "
                         "(earmark models --pretrained lists them)")
    return RELEASES[name]


# ---- the cache ------------------------------------------------------------------------------


def home() -> Path:
    """The cache folder: ``$EARMARK_HOME``, default ``~/.cache/earmark``."""
    return Path(os.environ.get("EARMARK_HOME") or "~/.cache/earmark").expanduser()


def offline() -> bool:
    """Whether ``EARMARK_OFFLINE`` forbids the network (``1``, ``true``, ``yes``)."""
    return os.environ.get("EARMARK_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def checkpoint_path(r: Release) -> Path:
    return home() / "checkpoints" / r.file


def _record_path(r: Release) -> Path:
    return checkpoint_path(r).with_name(r.file + ".sha256")


def model_path(r: Release) -> Path:
    """Where the model directory converted from ``r``'s file is cached."""
    return home() / "models" / r.name


def _model_record_path(r: Release) -> Path:
    return home() / "models" / f"{r.name}.json"


def _source_url(r: Release) -> str | None:
    mirror = os.environ.get("EARMARK_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{r.file}" if mirror else r.url


def _recorded_sha256(r: Release) -> str | None:
    path = _record_path(r)
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8").split()
    if not text or len(text[0]) != 64:
        raise ModelError(f"{path}: not a sha256 record (expected 'HASH  {r.file}'); remove it "
                         "to record the file again")
    return text[0].lower()


def _expected(r: Release) -> tuple[str | None, str]:
    """(sha256 the file must have, what says so) or (None, ...) before its first use."""
    if r.sha256 is not None:
        return r.sha256, "earmark's release table"
    recorded = _recorded_sha256(r)
    return recorded, f"the sha256 recorded at its first download ({_record_path(r)})"


def _where_to_get(r: Release) -> str:
    source = r.url or r.page
    return (f"get {r.file} from {source} and put it at {checkpoint_path(r)}, or run "
            f"`earmark pull {r.name} --file PATH`")


def _checkpoint(r: Release, offline_mode: bool, progress: bool | None) -> Path:
    """The cached, checked checkpoint of ``r``: downloaded (and recorded) if need be."""
    path = checkpoint_path(r)
    expected, by = _expected(r)
    if path.is_file():
        digest = check_file(path, r.size, expected, by)
        if expected is None:  # put there by hand before any download: its first use
            write_text(_record_path(r), f"{digest}  {r.file}\n")
        return path
    if offline_mode:
        raise DownloadError(f"{r.name}: {r.file} is not in earmark's cache and the network "
                            f"is off (EARMARK_OFFLINE or --offline); {_where_to_get(r)}")
    url = _source_url(r)
    if url is None:
        raise DownloadError(f"{r.name}: {r.file} cannot be downloaded by earmark: its host "
                            f"shares it in a folder that needs a browser; {_where_to_get(r)} "
                            "(or set EARMARK_MIRROR to a server that holds it)")
    print(f"downloading {r.file} for {r.name} from {url}", file=sys.stderr)
    try:
        digest = download(url, path, r.size, expected, progress=progress, expected_by=by)
    except IntegrityError as err:
        raise IntegrityError(f"{err} (from {url})") from None
    except DownloadError as err:
        raise DownloadError(f"{r.name}: {err}; or {_where_to_get(r)}") from None
    if expected is None:
        write_text(_record_path(r), f"{digest}  {r.file}\n")
    return path


def _take_file(r: Release, file: str | Path) -> Path:
    """Copy the user's ``file`` into the cache as ``r``'s checkpoint, checked as a download."""
    file = Path(file)
    if not file.is_file():
        raise ModelError(f"{file}: no such file (the {r.file} of {r.name})")
    path = checkpoint_path(r)
    expected, by = _expected(r)
    part = path.with_name(path.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(part) as tmp:  # the part is whole or absent
        shutil.copyfile(file, tmp)
    try:
        digest = check_file(part, r.size, expected, by, name=path)
    except IntegrityError as err:
        raise IntegrityError(f"{err} (copied from {file})") from None
    os.replace(part, path)
    if expected is None:
        write_text(_record_path(r), f"{digest}  {r.file}\n")
    return path


def _converted(r: Release) -> dict | None:
    """The record of ``r``'s converted model directory, after checking its weights against
    it; None when there is none (never converted, or cut off before its record)."""
    record_path, out = _model_record_path(r), model_path(r)
    if not record_path.is_file() or not out.is_dir():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        expected = record["weights_sha256"]
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: converted again
    from earmark.models.directory import WEIGHTS

    weights = out / WEIGHTS
    if not weights.is_file() or sha256_of(weights) != expected:
        aside = set_aside(out)
        record_path.unlink(missing_ok=True)
        raise IntegrityError(
            f"{weights}: not the weights earmark converted from {r.file} (sha256 recorded in "
            f"{record_path}); the model directory is set aside as {aside.name} and not used; "
            f"`earmark pull {r.name}` converts it again")
    return record


def _check_fits(model, r: Release, source: Path) -> None:
    """Refuse a converted model whose tensors are not those of ``r``'s architecture, naming
    the first key that does not fit (earmark's key names) and both shapes."""
    import torch

    from earmark.models.registry import create_model

    try:
        with torch.device("meta"):  # shapes only: no memory for a second full-size model
            want = create_model(r.model, AUDIOSET_CLASSES, **r.args, **r.convert_args)
    except Exception:  # a builder that computes on real tensors
        want = create_model(r.model, AUDIOSET_CLASSES, **r.args, **r.convert_args)
    expected, found = want.state_dict(), model.state_dict()
    what = f"{r.name} ({r.model}, {AUDIOSET_CLASSES} classes)"
    for key, value in expected.items():
        if key not in found:
            raise ModelError(f"{source}: does not fit {what}: its {key} "
                             f"{tuple(value.shape)} is not in the file")
        if found[key].shape != value.shape:
            raise ModelError(f"{source}: does not fit {what}: {key} is "
                             f"{tuple(found[key].shape)} in the file, {tuple(value.shape)} in "
                             f"{r.model}")
    for key, value in found.items():
        if key not in expected:
            raise ModelError(f"{source}: does not fit {what}: the file's {key} "
                             f"{tuple(value.shape)} has no place in {r.model}")
    if model.registry_name != r.model:
        raise ModelError(f"{source}: converts to {model.registry_name}, not {r.model}")


def _convert(r: Release, checkpoint: Path) -> Path:
    """Convert the checked checkpoint into the cached model directory and record its
    weights; the record, written last, marks the directory complete."""
    from earmark.models.convert import CONVERTERS, audioset_labels
    from earmark.models.directory import WEIGHTS, save_model_dir

    digest = sha256_of(checkpoint)
    model, _ = CONVERTERS[r.kind](checkpoint, trust=False, **r.convert_args)
    _check_fits(model, r, checkpoint)
    # the old record goes first: a reader never pairs it with the new weights
    _model_record_path(r).unlink(missing_ok=True)
    out = save_model_dir(model, model_path(r), audioset_labels(),
                         {"source": r.kind, "checkpoint": r.file, "release": r.name,
                          "url": r.url or r.page, "checkpoint_sha256": digest})
    write_json(_model_record_path(r), {
        "release": r.name, "checkpoint": r.file, "checkpoint_sha256": digest,
        "weights_sha256": sha256_of(out / WEIGHTS),
        "converted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return out


@contextlib.contextmanager
def _locked(r: Release):
    lock = checkpoint_path(r).with_name(r.file + ".lock")

    def waiting() -> None:
        print(f"waiting for another earmark process fetching {r.file} ({lock})",
              file=sys.stderr)

    with file_lock(lock, on_wait=waiting):
        yield


def pull(name: str, file: str | Path | None = None, offline_mode: bool | None = None,
         progress: bool | None = None) -> Path:
    """The cached model directory of the released checkpoint ``name``: downloaded (or
    copied from ``file``), checked and converted on first use; checked on every use.

    ``offline_mode``: no network (default: ``EARMARK_OFFLINE``). ``progress``: a download
    bar on stderr (default: on a terminal). Two processes pulling one name download it once:
    the second waits for the first.
    """
    r = release(name)
    offline_mode = offline() if offline_mode is None else offline_mode
    # a cache hit takes no lock (a cache on a read-only disk serves as well)
    if file is None and _ready(r):
        return model_path(r)
    with _locked(r):
        if file is not None:
            _take_file(r, file)
        if _ready(r):  # another process converted it while this one waited
            return model_path(r)
        checkpoint = _checkpoint(r, offline_mode, progress)
        return _convert(r, checkpoint)


def _ready(r: Release) -> bool:
    """Whether the cached model directory of ``r`` is complete, checked, and converted from
    the checkpoint the cache holds now (one taken with --file, or pinned anew, that differs
    is converted again)."""
    record = _converted(r)
    if record is None:
        return False
    current = _recorded_sha256(r) if r.sha256 is None else r.sha256
    return current is None or record.get("checkpoint_sha256") == current


def resolve_model(name_or_path: str | Path, offline_mode: bool | None = None,
                  progress: bool | None = None) -> Path:
    """What a MODEL argument names, as a path: an existing path as it is, else a released
    checkpoint's name as its cached model directory (pulled on first use, see :func:`pull`).
    Anything else comes back as a path for the caller's loader to refuse, unless it is close
    to a released name (then the error suggests it).

    >>> resolve_model("runs/esc/model")
    PosixPath('runs/esc/model')
    """
    path = Path(name_or_path)
    text = str(name_or_path)
    if path.exists():
        return path
    if text in RELEASES:
        return pull(text, offline_mode=offline_mode, progress=progress)
    if os.sep not in text and "/" not in text and not path.suffix:
        close = difflib.get_close_matches(text, RELEASES, n=3, cutoff=0.6)
        if close:
            raise ModelError(f"{text}: no such model directory, and no released model of "
                             f"that name; did you mean {', '.join(close)}? (earmark models "
                             "--pretrained lists them)")
    return path


def cache_state(r: Release) -> str:
    """What the cache holds for ``r``, without reading the files: ``converted``,
    ``checkpoint`` (downloaded, not yet converted) or ``-``."""
    if _model_record_path(r).is_file() and model_path(r).is_dir():
        return "converted"
    if checkpoint_path(r).is_file():
        return "checkpoint"
    return "-"


def pretrained_table() -> list[dict[str, Any]]:
    """One row per release: what ``earmark models --pretrained`` prints."""
    return [{"name": r.name, "model": r.model, "file": r.file,
             "size": r.size, "paper_map": r.paper_map, "evaluation": r.evaluation,
             "integrity": "pinned sha256" if r.pinned else "trusted on first use",
             "download": "direct" if r.url else "browser (pull --file)",
             "licence": r.licence, "labels": r.labels, "cached": cache_state(r)}
            for r in RELEASES.values()]
