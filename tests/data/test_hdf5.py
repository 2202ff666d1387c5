"""``hdf5:`` sources: PANNs / HTS-AT packs and indexes, SAT / CED label tables and packs."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from earmark.audio.io import audio_info, load_audio
from earmark.data.dataset import ClipDataset
from earmark.data.shards import read_shard, write_shards
from earmark.data.sources import from_spec
from earmark.errors import AudioError, DataError

CLASSES = ["Speech", "Dog", "Rain"]


def class_index(folder):
    rows = ["index,mid,display_name"] + [f'{i},/m/{i},"{n}"' for i, n in enumerate(CLASSES)]
    (folder / "class_labels_indices.csv").write_text("\n".join(rows) + "\n")


def panns_pack(path, n, seed=0, rate=None):
    rng = np.random.default_rng(seed)
    wave = (rng.standard_normal((n, 3200)) * 3000).astype(np.int16)
    target = np.zeros((n, len(CLASSES)), bool)
    target[np.arange(n), np.arange(n) % 3] = True
    target[0, 2] = True  # the first clip has two labels
    with h5py.File(path, "w") as f:
        f["audio_name"] = np.array([f"Y{seed}_{i}.wav".encode() for i in range(n)], dtype="S20")
        f["waveform"] = wave
        f["target"] = target
        if rate:
            f.attrs["sample_rate"] = rate
    return wave, target


def test_panns_pack_is_a_multi_label_manifest_read_as_htsat_scales_it(tmp_path):
    class_index(tmp_path)
    wave, target = panns_pack(tmp_path / "balanced_train.h5", 4)
    m = from_spec(f"hdf5:{tmp_path / 'balanced_train.h5'}")
    assert m.multi_label and m.labels == CLASSES and len(m) == 4
    assert m.items[0].labels == ("Speech", "Rain") and m.items[1].labels == ("Dog",)
    assert {it.split for it in m.items} == {"train"}
    x, sr = load_audio(m.items[2].path)
    assert sr == 32000  # the PANNs packs' rate when the file does not say
    np.testing.assert_allclose(x.numpy(), wave[2] / 32767.0, rtol=0, atol=1e-7)
    assert audio_info(m.items[2].path).frames == 3200


def test_a_folder_of_packs_and_an_index_written_elsewhere(tmp_path):
    class_index(tmp_path)
    panns_pack(tmp_path / "balanced_train.h5", 3, seed=1, rate=16000)
    panns_pack(tmp_path / "eval.h5", 2, seed=2, rate=16000)
    m = from_spec(f"hdf5:{tmp_path}")
    assert [it.split for it in m.items] == ["train"] * 3 + ["test"] * 2
    assert load_audio(m.items[4].path)[1] == 16000  # the file's sample_rate attribute
    index = tmp_path / "idx" / "eval_index.h5"
    index.parent.mkdir()
    with h5py.File(index, "w") as f:  # as create_indexes.py writes it on the authors' machine
        f["audio_name"] = np.array([b"a", b"b"], dtype="S20")
        f["target"] = np.eye(3, dtype=bool)[:2]
        f["hdf5_path"] = np.array([b"/home/someone/audioset/eval.h5"] * 2, dtype="S200")
        f["index_in_hdf5"] = np.array([1, 0], dtype=np.int32)
    with pytest.raises(DataError, match="does not exist"):
        from_spec(f"hdf5:{index}")
    (tmp_path / "idx" / "eval.h5").symlink_to(tmp_path / "eval.h5")
    m2 = from_spec(f"hdf5:{index}")
    assert m2.labels == CLASSES and m2.items[0].split == "test"
    torch.testing.assert_close(load_audio(m2.items[0].path)[0], load_audio(m.items[4].path)[0])


def sat_layout(tmp_path, sep="\t"):
    rng = np.random.default_rng(3)
    pack = tmp_path / "hdf5" / "balanced.h5"
    pack.parent.mkdir()
    waves = {f"Yclip{i}.wav": (rng.standard_normal(1600 + 160 * i) * 2000).astype(np.int16)
             for i in range(3)}
    with h5py.File(pack, "w") as f:
        for name, w in waves.items():
            f[name] = w
    table = tmp_path / "labels" / "balanced.tsv"
    table.parent.mkdir()
    lines = [sep.join(["filename", "labels", "duration", "hdf5path"])]
    lines += [sep.join([f"/data/audio/{name}", f"{i};2" if i < 2 else "1", "0.1", str(pack)])
              for i, name in enumerate(waves)]
    table.write_text("\n".join(lines) + "\n")
    return table, waves


@pytest.mark.parametrize("sep", ["\t", " "])
def test_sat_table_reads_clips_by_base_name_as_sat_scales_them(tmp_path, sep):
    class_index(tmp_path)  # in the table's parent folder
    table, waves = sat_layout(tmp_path, sep)
    m = from_spec(f"hdf5:{table}")
    assert m.labels == CLASSES and m.multi_label
    assert [it.labels for it in m.items] == [("Speech", "Rain"), ("Dog", "Rain"), ("Dog",)]
    x, sr = load_audio(m.items[1].path)
    assert sr == 16000
    np.testing.assert_allclose(x.numpy(), waves["Yclip1.wav"] / 32768.0, rtol=0, atol=1e-7)
    ds = ClipDataset(m, 16000, 0.1)
    wave, target = ds[2]
    assert wave.shape == (1600,) and target.tolist() == [0.0, 1.0, 0.0]


def test_without_a_class_list_the_labels_are_the_indices(tmp_path):
    table, _ = sat_layout(tmp_path)
    assert from_spec(f"hdf5:{table}").labels == ["0", "1", "2"]


def test_bad_packs_and_tables_are_named(tmp_path):
    table, _ = sat_layout(tmp_path)
    bad = tmp_path / "bad.tsv"
    bad.write_text("filename\tlabels\nx.wav\t1\n")
    with pytest.raises(DataError, match="bad.tsv: missing column.*hdf5path"):
        from_spec(f"hdf5:{bad}")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="other.h5: is neither"):
        from_spec(f"hdf5:{other}")
    missing = table.read_text().replace("Yclip2.wav\t1", "Ygone.wav\t1")
    table.write_text(missing)
    m = from_spec(f"hdf5:{table}")
    with pytest.raises(AudioError, match="Ygone.wav: no clip of this name"):
        load_audio(m.items[2].path)


def test_a_pack_writes_as_shards(tmp_path):
    class_index(tmp_path)
    wave, _ = panns_pack(tmp_path / "balanced_train.h5", 5, rate=16000)
    m = from_spec(f"hdf5:{tmp_path / 'balanced_train.h5'}")
    index = write_shards(m, tmp_path / "shards")
    assert index["clips"] == 5 and index["multi_label"] and index["sample_rate"] == 16000
    samples = list(read_shard(tmp_path / "shards" / "shard-000000.tar"))
    assert samples[0][2]["labels"] == ["Speech", "Rain"]
    np.testing.assert_allclose(samples[3][0], wave[3] / 32767.0, atol=1 / 2 ** 14)
