from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch

from earmark.audio.clips import load_segment
from earmark.cli import main
from earmark.data.manifest import Item, Manifest
from earmark.data.shards import read_shard, write_shards
from earmark.errors import DataError


@pytest.fixture
def clips(tmp_path):
    """Twelve 0.5 s clips of two classes, one of them a segment of a longer file."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        path = tmp_path / "audio" / f"c{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, 0.3 * rng.standard_normal(8000 if i else 32000), 16000, subtype="PCM_16")
        seg = dict(onset=0.5, offset=1.0) if i == 0 else {}
        items.append(Item(str(path), ("dog" if i % 2 else "rain",), split="train",
                          group=f"g{i % 3}", **seg))
    return Manifest(items, ["dog", "rain"], name="clips")


def members(path):
    with tarfile.open(path) as tar:
        return [m.name for m in tar]


def test_shards_hold_every_clip_as_flac_and_json_with_an_index(clips, tmp_path):
    out = tmp_path / "shards"
    index = write_shards(clips, out, shard_size=40_000)
    assert len(index["shards"]) > 1 and index["clips"] == 12 and not index["failed"]
    assert index["clips_per_class"] == {"dog": 6, "rain": 6} and index["sample_rate"] == 16000
    assert index["hours"] == pytest.approx(12 * 0.5 / 3600, rel=1e-3)
    assert json.loads((out / "index.json").read_text()) == index
    names = members(out / "shard-000000.tar")
    assert names[:2] == ["000000000.flac", "000000000.json"]  # webdataset's KEY.ext pairs
    seen = []
    for shard in index["shards"]:
        samples = list(read_shard(out / shard["name"]))
        assert len(samples) == shard["clips"]
        for wave, sr, meta in samples:
            item = clips.items[int(meta["key"])]
            expected = load_segment(item.path, 16000, item.onset, item.offset).numpy()
            assert sr == 16000 and np.abs(wave - expected).max() < 1 / 2 ** 14  # 16-bit FLAC
            assert meta["labels"] == list(item.labels) and meta["group"] == item.group
            assert meta["duration"] == pytest.approx(0.5)
            seen.append(meta["key"])
    assert seen == [f"{i:09d}" for i in range(12)]
    with tarfile.open(out / "shard-000000.tar") as tar:  # the segment says where it came from
        first = json.loads(tar.extractfile("000000000.json").read())
    assert (first["onset"], first["offset"]) == (0.5, 1.0)


def test_a_killed_run_leaves_whole_shards_and_a_rerun_continues(clips, tmp_path):
    whole = write_shards(clips, tmp_path / "whole", shard_size=40_000)
    out = tmp_path / "killed"
    write_shards(clips, out, shard_size=40_000)
    # as if killed while writing the third shard: its temporary file, no record, no index
    (out / "shard-000002.tar").rename(out / ".shard-000002.0123.tmp.tar")
    (out / "shard-000002.json").unlink()
    for later in range(3, len(whole["shards"])):
        (out / f"shard-{later:06d}.tar").unlink()
        (out / f"shard-{later:06d}.json").unlink()
    (out / "index.json").unlink()
    index = write_shards(clips, out, shard_size=40_000)
    assert index["shards"] == whole["shards"]
    for shard in whole["shards"]:  # the same bytes as an uninterrupted run
        expected = (tmp_path / "whole" / shard["name"]).read_bytes()
        assert (out / shard["name"]).read_bytes() == expected
    # other items in the same folder: refused, nothing overwritten
    other = Manifest(clips.items[:5], clips.labels, name="other")
    with pytest.raises(DataError, match="holds shards of other items"):
        write_shards(other, out, shard_size=40_000)


def test_unreadable_files_are_skipped_and_listed_and_workers_give_the_same_shards(clips, tmp_path):
    bad = tmp_path / "audio" / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEnot audio")
    m = Manifest([*clips.items[:5], Item(str(bad), ("dog",)), *clips.items[5:]], clips.labels)
    one = write_shards(m, tmp_path / "one", shard_size=40_000)
    assert one["clips"] == 12 and len(one["failed"]) == 1 and "broken.wav" in one["failed"][0]
    two = write_shards(m, tmp_path / "two", shard_size=40_000, workers=2)
    assert two["shards"] == one["shards"]


def test_shard_command(clips, tmp_path, capsys):
    spec = tmp_path / "clips.csv"
    clips.write(spec)
    assert main(["shard", f"manifest:{spec}", str(tmp_path / "s"), "--shard-size", "0.05",
                 "--no-progress"]) == 0
    assert "12 clips" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "index.json").read_text())["clips"] == 12


def test_wav_shards_hold_the_same_samples_and_read_like_flac(clips, tmp_path):
    from earmark.audio.io import load_audio
    from earmark.data.shards import load

    flac = write_shards(clips, tmp_path / "flac")
    wav = write_shards(clips, tmp_path / "wav", audio_format="wav")
    assert (flac["audio"], wav["audio"]) == ("flac", "wav")
    assert members(tmp_path / "wav" / "shard-000000.tar")[:2] == ["000000000.wav",
                                                                  "000000000.json"]
    assert wav["shards"][0]["bytes"] > flac["shards"][0]["bytes"]
    for a, b in zip(load(str(tmp_path / "flac")).items, load(str(tmp_path / "wav")).items):
        assert torch.equal(load_audio(a.path)[0], load_audio(b.path)[0])  # both 16-bit
    with pytest.raises(ValueError, match="audio_format"):
        write_shards(clips, tmp_path / "mp3", audio_format="mp3")


def test_strong_labels_of_soundscapes_travel_in_the_shards(tmp_path):
    from earmark.data.shards import load
    from earmark.data.synth import load_soundscapes, synthesize

    data = synthesize(tmp_path / "synth", clips_per_class=0, soundscapes=2,
                      soundscape_seconds=2, seed=0)
    scapes = load_soundscapes(data)
    index = write_shards(scapes, tmp_path / "shards")
    assert index["clips"] == 2 and not index["failed"]
    back = load(str(tmp_path / "shards"))
    for item, original in zip(back.items, scapes.items):
        events = [(e.onset, e.offset, e.label) for e in back.meta["events"][item.path]]
        assert events == [tuple(e) for e in scapes.meta["events"][original.path]]
