"""``earmark voices``: words spoken by every offline voice, written as a grouped manifest."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import earmark.voices
from earmark.cli import main
from earmark.data.manifest_file import load
from earmark.errors import EarmarkError
from earmark.voices import ENGINES, EngineMissing, Renditions, Take, find_engines, speak_words

ONE = Renditions(count=1)


def _engine_or_skip(name):
    reason = ENGINES[name]().missing()
    if reason:
        pytest.skip(reason)
    return ENGINES[name]()


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.wav"))}


def _fake_flite(tmp_path: Path, fail_voice: str) -> str:
    """A PATH whose flite fails for one voice and runs the real one for the others."""
    real = shutil.which("flite")
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "flite"
    script.write_text("#!/bin/sh\n"
                      f'case " $* " in *" -voice {fail_voice} "*) '
                      'echo "cannot load voice" >&2; exit 3;; esac\n'
                      f'exec {real} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def test_no_engine_uses_espeak():
    for name, cls in ENGINES.items():
        engine = cls()
        assert not any("espeak" in p for p in engine.programs), name
        assert "espeak" not in engine.provides.lower(), name
    banned = {"phonemizer", "piper_phonemize", "espeakng", "espeak", "piper"}
    for path in Path(earmark.voices.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & banned, (path.name, names)
        for arg in ("espeak", "espeak-ng"):
            assert f'"{arg}"' not in path.read_text(encoding="utf-8"), path.name


@pytest.mark.parametrize("name", list(ENGINES))
def test_each_engine_writes_a_grouped_manifest(name, tmp_path):
    engine = _engine_or_skip(name)
    voice = engine.voices()[0]
    report = speak_words("yes,no", tmp_path, labels="yes=y", engines=[name], voices=[voice],
                         renditions=ONE, pseudo_speakers=[1.1])
    group = f"{name}-{voice}"
    assert report["failed"] == [] and report["written"] == 4
    assert report["groups"] == [group, f"{group}-vt1.10"]
    manifest = load(str(tmp_path / "manifest.csv"))
    assert manifest.labels == ["no", "y"]
    assert {(Path(it.path).parent.name, it.labels, it.group) for it in manifest.items} == {
        (g, (label,), g) for g in report["groups"] for label in ("y", "no")}
    for item in manifest.items:
        x, rate = sf.read(item.path)
        assert rate == 8000 and x.ndim == 1 and 0.1 < len(x) / rate < 2.0
        assert np.abs(x).max() > 0.05
        assert np.abs(x[:40]).max() < np.abs(x).max()  # leading silence trimmed
    assert (tmp_path / "voices.json").exists()


def test_same_seed_same_files_and_a_rerun_resumes(tmp_path):
    engines = [n for n in ENGINES if not ENGINES[n]().missing()]
    if not engines:
        pytest.skip("no text-to-speech engine installed")
    voices = [f"{n}-{ENGINES[n]().voices()[0]}" for n in engines]
    args = dict(engines=engines, voices=voices, renditions=Renditions(count=2),
                pseudo_speakers=[0.9], seed=3)
    first = speak_words("one,two", tmp_path / "a", **args)
    speak_words("one,two", tmp_path / "b", workers=2, **args)
    assert first["failed"] == [] and first["written"] == len(engines) * 2 * 2 * 2
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert len(_hashes(tmp_path / "a")) == first["written"]
    other = speak_words("one,two", tmp_path / "c", **{**args, "seed": 4})
    assert other["written"] == first["written"]
    assert _hashes(tmp_path / "c") != _hashes(tmp_path / "a")

    # a stopped run: one clip missing; the rerun writes it alone, as it was
    victim = sorted((tmp_path / "a").rglob("*.wav"))[0]
    before = _hashes(tmp_path / "a")
    victim.unlink()
    again = speak_words("one,two", tmp_path / "a", **args)
    assert (again["written"], again["existing"]) == (1, first["written"] - 1)
    assert _hashes(tmp_path / "a") == before
    assert speak_words("one,two", tmp_path / "a", **args)["written"] == 0


def test_carrier_word_is_cut_out():
    for name in ("festival", "flite"):
        if ENGINES[name]().missing():
            continue
        engine = ENGINES[name]()
        voice = engine.voices()[0]
        alone, cut = engine.speak(voice, [Take("seven"), Take("seven", "carrier")])
        phrase = engine.speak(voice, [Take("say seven again")])[0]
        seconds = [len(s.wave) / s.sample_rate for s in (alone, cut, phrase)]
        # the word only: shorter than the phrase, about as long as the word without silence
        assert 0.2 < seconds[1] < 0.6 * seconds[2], (name, seconds)


def test_asking_for_a_missing_engine_names_its_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no program at all
    with pytest.raises(EngineMissing, match="flite: program 'flite' not found.*Debian "
                                            "package flite"):
        find_engines(["flite"])
    with pytest.raises(EngineMissing, match="no offline text-to-speech engine found: "
                                            "festival: .*flite: .*piper: "):
        speak_words("yes", tmp_path / "out")
    with pytest.raises(EngineMissing, match="klatt: no such text-to-speech engine"):
        find_engines(["klatt"])
    assert main(["voices", "yes", str(tmp_path / "out"), "--engines", "flite"]) == 2
    assert not (tmp_path / "out").exists()


def test_a_failing_voice_is_skipped_and_reported(tmp_path, monkeypatch, capsys):
    flite = _engine_or_skip("flite")
    if not {"slt", "rms"} <= set(flite.voices()):
        pytest.skip("flite lacks its slt and rms voices")
    monkeypatch.setenv("PATH", _fake_flite(tmp_path, "rms"))
    code = main(["voices", "yes,no", str(tmp_path / "out"), "--engines", "flite",
                 "--voices", "slt,rms", "--renditions", "1", "--pseudo-speakers", "none"])
    assert code == 1
    err = capsys.readouterr().err
    assert "failed: flite-rms/yes_0.wav: flite voice rms saying 'yes'" in err
    assert "cannot load voice" in err
    manifest = load(str(tmp_path / "out" / "manifest.csv"))
    assert sorted(Path(it.path).name for it in manifest.items) == ["no_0.wav", "yes_0.wav"]
    assert {it.group for it in manifest.items} == {"flite-slt"}


def test_words_and_labels_from_files(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("zero\n# comment\n\nthank you\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("zero=0\nthank you=thanks\n")
    assert earmark.voices.parse_words(words) == ["zero", "thank you"]
    assert earmark.voices.parse_labels(labels, ["zero", "thank you"]) == {
        "zero": "0", "thank you": "thanks"}
    with pytest.raises(EarmarkError, match="'fiev' is not one of the words"):
        earmark.voices.parse_labels("fiev=5", ["five"])
