"""Every data source on a tiny tree in its real layout, plus labels.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from earmark.data import audioset, desed, esc50, folder, fsd50k, fsdd, manifest_file, speechcommands
from earmark.data.labels import counts, encode, targets
from earmark.data.manifest import Item, Manifest
from earmark.errors import DataError


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def splits(m: Manifest) -> dict[str, str]:
    return {Path(it.path).name: it.split for it in m.items}


# ---- fsdd ------------------------------------------------------------------------------------

def test_fsdd_real_copy_has_official_test_split(fsdd_dir):
    m = fsdd.load(str(fsdd_dir))
    assert len(m) == 2500
    assert m.labels == [str(d) for d in range(10)] and not m.multi_label
    sizes = {s: len(m.split(s)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 2000, "valid": 250, "test": 250}
    for it in m.split("test"):
        take = int(Path(it.path).stem.split("_")[-1])
        assert take < 5 and it.labels == (Path(it.path).name[0],)
    assert all(os.path.isabs(it.path) for it in m)
    assert len(m.meta["speakers"]) == 5
    assert m.groups() == m.meta["speakers"]  # the speaker is the group


def test_fsdd_spec_resolves_through_from_spec(fsdd_dir):
    from earmark.data.sources import from_spec

    assert len(from_spec(f"fsdd:{fsdd_dir}")) == 2500


def test_fsdd_takes_decide_the_split_and_odd_names_are_skipped(tmp_path, write_wav):
    for name in ("3_alice_0", "3_alice_7", "4_bob_12", "notes"):
        write_wav(f"fsdd/{name}.wav", seconds=0.1, sr=8000)
    with pytest.warns(UserWarning, match="notes.wav"):
        m = fsdd.load(str(tmp_path / "fsdd"))  # files directly in DIR, no recordings/
    assert splits(m) == {"3_alice_0.wav": "test", "3_alice_7.wav": "valid",
                         "4_bob_12.wav": "train"}
    assert [it.labels for it in m] == [("3",), ("3",), ("4",)]
    assert len(m.labels) == 10  # the full digit vocabulary even when digits are absent
    assert [it.group for it in m] == ["alice", "alice", "bob"]
    train, test = m.for_group("alice")
    assert [Path(it.path).name for it in train] == ["4_bob_12.wav"] and len(test) == 2


def test_fsdd_without_recordings_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no FSDD recordings"):
        fsdd.load(str(tmp_path / "empty"))


# ---- esc50 -----------------------------------------------------------------------------------

ESC_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def make_esc50(tmp_path, write_wav, rows):
    root = tmp_path / "ESC-50"
    write_text(root / "meta" / "esc50.csv", ESC_HEADER + "".join(rows))
    for row in rows:
        write_wav(f"ESC-50/audio/{row.split(',')[0]}", seconds=0.1)
    return root


def test_esc50_folds_splits_and_target_order(tmp_path, write_wav):
    root = make_esc50(tmp_path, write_wav, [
        "1-1-A-1.wav,1,1,rooster,False,1,A\n",
        "4-2-A-0.wav,4,0,dog,True,2,A\n",
        "5-3-A-1.wav,5,1,rooster,False,3,A\n",
    ])
    m = esc50.load(str(root))
    assert m.labels == ["dog", "rooster"]  # by target index, not by first appearance
    assert [it.fold for it in m] == [1, 4, 5]
    assert [it.split for it in m] == ["train", "valid", "test"]
    assert m.items[1].labels == ("dog",) and m.meta["esc10"] == ["dog"]
    assert m.items[0].path == str(root / "audio" / "1-1-A-1.wav")
    assert [it.group for it in m] == ["1", "2", "3"]  # src_file: the source recording
    train, test = m.for_fold(5)
    assert [Path(it.path).name for it in test] == ["5-3-A-1.wav"] and len(train) == 2


def test_esc50_missing_metadata_is_named(tmp_path):
    (tmp_path / "audio").mkdir()
    with pytest.raises(DataError, match=r"meta/esc50\.csv: missing ESC-50 metadata"):
        esc50.load(str(tmp_path))


def test_esc50_missing_audio_is_counted_and_named(tmp_path, write_wav):
    root = make_esc50(tmp_path, write_wav, ["1-1-A-0.wav,1,0,dog,True,1,A\n"])
    write_text(root / "meta" / "esc50.csv", ESC_HEADER + "1-1-A-0.wav,1,0,dog,True,1,A\n"
               "2-9-B-0.wav,2,0,dog,True,9,B\n")
    with pytest.raises(DataError, match=r"esc50\.csv: 1 of 2 listed audio files are missing: "
                       r".*2-9-B-0\.wav"):
        esc50.load(str(root))


# ---- speechcommands --------------------------------------------------------------------------

def test_speechcommands_lists_split_and_noise_is_not_a_class(tmp_path, write_wav):
    for name in ("yes/a.wav", "yes/b.wav", "no/c.wav", "_background_noise_/white.wav"):
        write_wav(f"sc/{name}", seconds=0.1)
    root = tmp_path / "sc"
    write_text(root / "validation_list.txt", "yes/b.wav\n")
    write_text(root / "testing_list.txt", "no/c.wav\n")
    m = speechcommands.load(str(root))
    assert m.labels == ["no", "yes"] and not m.multi_label
    assert splits(m) == {"a.wav": "train", "b.wav": "valid", "c.wav": "test"}
    assert m.meta["background_noise"] == [str(root / "_background_noise_" / "white.wav")]


def test_speechcommands_speaker_id_before_nohash_is_the_group(tmp_path, write_wav):
    for name in ("yes/0a7c2a8d_nohash_0.wav", "yes/0a7c2a8d_nohash_1.wav",
                 "no/bb05582b_nohash_0.wav", "no/odd.wav"):
        write_wav(f"sc/{name}", seconds=0.1)
    root = tmp_path / "sc"
    write_text(root / "validation_list.txt", "")
    write_text(root / "testing_list.txt", "no/bb05582b_nohash_0.wav\n")
    m = speechcommands.load(str(root))
    assert {Path(it.path).name: it.group for it in m} == {
        "0a7c2a8d_nohash_0.wav": "0a7c2a8d", "0a7c2a8d_nohash_1.wav": "0a7c2a8d",
        "bb05582b_nohash_0.wav": "bb05582b", "odd.wav": None}
    assert m.groups() == ["0a7c2a8d", "bb05582b"]


def test_speechcommands_missing_list_and_listed_file_are_named(tmp_path, write_wav):
    write_wav("sc/yes/a.wav", seconds=0.1)
    root = tmp_path / "sc"
    write_text(root / "validation_list.txt", "yes/a.wav\n")
    with pytest.raises(DataError, match="testing_list.txt: missing"):
        speechcommands.load(str(root))
    write_text(root / "testing_list.txt", "yes/gone.wav\n")
    with pytest.raises(DataError, match=r"testing_list\.txt: 1 of 1 .*yes/gone\.wav"):
        speechcommands.load(str(root))


# ---- fsd50k ----------------------------------------------------------------------------------

def make_fsd50k(tmp_path, write_wav):
    gt = tmp_path / "FSD50K" / "FSD50K.ground_truth"
    write_text(gt / "vocabulary.csv", "1,Bark,/m/05tny_\n0,Accordion,/m/0mkg\n2,Dog,/m/0bt9lr\n")
    write_text(gt / "dev.csv", 'fname,labels,mids,split\n11,"Bark,Dog","/m/05tny_,/m/0bt9lr",train\n'
               "12,Accordion,/m/0mkg,val\n")
    write_text(gt / "eval.csv", "fname,labels,mids\n21,Dog,/m/0bt9lr\n")
    for name in ("FSD50K.dev_audio/11", "FSD50K.dev_audio/12", "FSD50K.eval_audio/21"):
        write_wav(f"FSD50K/{name}.wav", seconds=0.1)
    return tmp_path / "FSD50K"


def test_fsd50k_multi_label_splits_and_vocabulary_order(tmp_path, write_wav):
    m = fsd50k.load(str(make_fsd50k(tmp_path, write_wav)))
    assert m.labels == ["Accordion", "Bark", "Dog"] and m.multi_label
    assert [it.labels for it in m] == [("Bark", "Dog"), ("Accordion",), ("Dog",)]
    assert splits(m) == {"11.wav": "train", "12.wav": "valid", "21.wav": "test"}
    assert m.items[2].path.endswith("FSD50K.eval_audio/21.wav")


def test_fsd50k_unknown_label_and_missing_audio_are_named(tmp_path, write_wav):
    root = make_fsd50k(tmp_path, write_wav)
    (root / "FSD50K.eval_audio" / "21.wav").unlink()
    with pytest.raises(DataError, match=r"eval\.csv: 1 of 1 .*FSD50K\.eval_audio/21\.wav"):
        fsd50k.load(str(root))
    write_text(root / "FSD50K.ground_truth" / "eval.csv", "fname,labels,mids\n21,Meow,/m/x\n")
    with pytest.raises(DataError, match="line 2: label.*Meow"):
        fsd50k.load(str(root))
    (root / "FSD50K.ground_truth" / "vocabulary.csv").unlink()
    with pytest.raises(DataError, match="vocabulary.csv: missing"):
        fsd50k.load(str(root))


# ---- audioset --------------------------------------------------------------------------------

CLASS_INDEX = ('index,mid,display_name\n0,/m/09x0r,"Speech"\n'
               '1,/m/05zppz,"Male speech, man speaking"\n2,/m/0bt9lr,"Dog"\n')
SEGMENTS = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
            "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=6\n"
            "# YTID, start_seconds, end_seconds, positive_labels\n"
            '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
            '-0RWZT-miFs, 420.000, 430.000, "/m/0bt9lr"\n'
            '-1nilez17Dg, 0.000, 10.000, "/m/0bt9lr,/m/09x0r"\n'
            '-1TayByRNGs, 5.000, 15.000, "/m/09x0r"\n')


def make_audioset(tmp_path, write_wav, csv_name="balanced_train_segments.csv"):
    write_text(tmp_path / "audioset" / "class_labels_indices.csv", CLASS_INDEX)  # in the parent
    csv_path = write_text(tmp_path / "audioset" / "lists" / csv_name, SEGMENTS)
    write_wav("audioset/lists/--PJHxphWEs.wav", seconds=0.1)
    write_wav("audioset/lists/audio/Y-0RWZT-miFs.flac", seconds=0.1)
    write_wav("audioset/lists/audio/-1nilez17Dg_0_10.wav", seconds=0.1)
    return csv_path  # -1TayByRNGs has no file


def test_audioset_finds_local_files_and_counts_the_missing(tmp_path, write_wav):
    csv_path = make_audioset(tmp_path, write_wav)
    with pytest.warns(UserWarning, match="1 of 4 segments have no local audio.*-1TayByRNGs"):
        m = audioset.load(str(csv_path))
    assert m.meta["missing"] == 1 and m.multi_label
    assert m.labels == ["Speech", "Male speech, man speaking", "Dog"]
    assert [Path(it.path).name for it in m] == ["--PJHxphWEs.wav", "Y-0RWZT-miFs.flac",
                                                "-1nilez17Dg_0_10.wav"]
    assert [it.labels for it in m] == [("Speech", "Male speech, man speaking"), ("Dog",),
                                       ("Dog", "Speech")]
    assert {it.split for it in m} == {"train"}
    assert targets(m).tolist()[0] == [1.0, 1.0, 0.0]


def test_audioset_eval_csv_is_test_and_class_list_is_required(tmp_path, write_wav):
    csv_path = make_audioset(tmp_path, write_wav, "eval_segments.csv")
    with pytest.warns(UserWarning):
        assert {it.split for it in audioset.load(str(csv_path))} == {"test"}
    (tmp_path / "audioset" / "class_labels_indices.csv").unlink()
    with pytest.raises(DataError, match="class_labels_indices.csv: missing AudioSet class list"):
        audioset.load(str(csv_path))


def test_audioset_accepted_file_names():
    names = audioset.candidate_names("abc", "30.000", "40.000")
    for stem in ("abc", "Yabc", "abc_30", "abc_30.000", "abc_30.0_40.0", "Yabc_30_40",
                 "Yabc_30.000_40.000"):
        assert stem in names


# ---- desed -----------------------------------------------------------------------------------

def make_desed(tmp_path, write_wav):
    root = tmp_path / "DESED"
    write_text(root / "metadata" / "validation" / "validation.tsv",
               "filename\tonset\toffset\tevent_label\n"
               "a.wav\t0.5\t1.0\tDog\na.wav\t0.2\t0.8\tSpeech\na.wav\t2.0\t2.5\tDog\n"
               "b.wav\t\t\tCat\n")
    write_text(root / "metadata" / "validation" / "validation_durations.tsv",
               "filename\tduration\na.wav\t10.0\n")
    write_text(root / "metadata" / "eval" / "public.tsv",
               "filename\tonset\toffset\tevent_label\nc.wav\t1.0\t3.0\tBlender\n")
    write_text(root / "metadata" / "train" / "weak.tsv", "filename\tevent_labels\nd.wav\tCat,Dog\n")
    for name in ("validation/validation/a", "validation/validation/b", "eval/public/c",
                 "train/weak/d"):
        write_wav(f"DESED/audio/{name}.wav", seconds=0.1)
    return root


def test_desed_clip_labels_events_and_splits(tmp_path, write_wav):
    root = make_desed(tmp_path, write_wav)
    m = desed.load(str(root))
    assert m.labels == desed.LABELS and m.multi_label
    by_name = {Path(it.path).name: it for it in m}
    assert by_name["a.wav"].labels == ("Dog", "Speech")
    assert by_name["b.wav"].labels == ("Cat",) and by_name["d.wav"].labels == ("Cat", "Dog")
    assert splits(m) == {"a.wav": "valid", "b.wav": "valid", "c.wav": "test", "d.wav": "train"}
    a = str(root / "audio" / "validation" / "validation" / "a.wav")
    assert m.meta["events"][a] == [(0.2, 0.8, "Speech"), (0.5, 1.0, "Dog"), (2.0, 2.5, "Dog")]
    assert by_name["b.wav"].path not in m.meta["events"]  # weak label only
    assert m.meta["skipped_tables"] == [str(root / "metadata" / "validation"
                                            / "validation_durations.tsv")]


def test_desed_flat_layout_missing_rows_and_missing_audio_folder(tmp_path, write_wav):
    root = tmp_path / "mine"
    write_text(root / "strong.tsv", "filename\tonset\toffset\tevent_label\n"
               "x.wav\t0.0\t0.5\tKettle\ngone.wav\t0.1\t0.2\tKettle\n")
    write_wav("mine/audio/x.wav", seconds=0.1)
    with pytest.warns(UserWarning, match="1 of 2 listed audio files are missing"):
        m = desed.load(str(root))
    assert m.labels == ["Kettle"] and m.meta["missing"] == 1 and len(m) == 1

    other = tmp_path / "other"
    write_text(other / "metadata" / "eval" / "public.tsv",
               "filename\tonset\toffset\tevent_label\nc.wav\t1.0\t3.0\tDog\n")
    with pytest.raises(DataError, match="audio/eval/public: missing audio folder"):
        desed.load(str(other))


# ---- folder ----------------------------------------------------------------------------------

def test_folder_classes_recursive_files_and_hash_split(tmp_path, write_wav):
    for name in ("dog/a.wav", "dog/sub/b.flac", "rain/c.wav", "_skip/d.wav", "stray.wav"):
        write_wav(f"sounds/{name}", seconds=0.1)
    (tmp_path / "sounds" / "dog" / "notes.txt").write_text("not audio")
    with pytest.warns(UserWarning, match="outside any class folder"):
        m = folder.load(str(tmp_path / "sounds"))
    assert m.labels == ["dog", "rain"] and not m.multi_label
    assert [(Path(it.path).name, it.labels) for it in m] == [
        ("a.wav", ("dog",)), ("b.flac", ("dog",)), ("c.wav", ("rain",))]
    assert m.items[1].split == folder.hash_split("dog/sub/b.flac")


def test_folder_hash_split_is_80_10_10():
    got = [folder.hash_split(f"c/{i}.wav") for i in range(3000)]
    share = {s: got.count(s) / len(got) for s in ("train", "valid", "test")}
    assert share["train"] == pytest.approx(0.8, abs=0.03)
    assert share["valid"] == pytest.approx(0.1, abs=0.02)
    assert share["test"] == pytest.approx(0.1, abs=0.02)


def test_folder_without_audio_is_an_error(tmp_path):
    (tmp_path / "x" / "dog").mkdir(parents=True)
    with pytest.raises(DataError, match="no audio files found"):
        folder.load(str(tmp_path / "x"))


# ---- manifest files --------------------------------------------------------------------------

def sample_manifest(tmp_path, write_wav) -> Manifest:
    paths = [str(write_wav(f"clips/{n}.wav", seconds=0.1)) for n in ("a", "b", "c")]
    items = [Item(paths[0], ("dog", "cat")), Item(paths[1], ("rain",), 0.5, 1.5, "valid", 2),
             Item(paths[2], ("Male speech, man speaking",), split="test", fold=1,
                  group="site 3")]
    return Manifest(items=items, labels=["Male speech, man speaking", "cat", "dog", "rain"],
                    multi_label=True)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_round_trips_write(tmp_path, write_wav, suffix):
    m = sample_manifest(tmp_path, write_wav)
    back = manifest_file.load(str(m.write(tmp_path / f"lists/m{suffix}")))
    assert back.items == m.items
    assert [it.group for it in back] == [None, None, "site 3"]  # blank group = None
    assert back.labels == m.labels and back.multi_label and back.has_splits


def test_manifest_csv_relative_paths_and_comma_labels(tmp_path, write_wav):
    write_wav("lists/audio/a.wav", seconds=0.1)
    write_wav("lists/audio/b.wav", seconds=0.1)
    csv_path = write_text(tmp_path / "lists" / "m.csv",
                          'path,labels\naudio/a.wav,"dog,cat"\naudio/b.wav,cat\n')
    m = manifest_file.load(str(csv_path))
    assert m.items[0].path == str(tmp_path / "lists" / "audio" / "a.wav")
    assert m.items[0].labels == ("dog", "cat") and m.multi_label
    assert m.labels == ["cat", "dog"] and m.items[1].split == "train" and m.items[1].fold is None
    assert not m.has_splits and m.items[1].group is None


def test_manifest_jsonl_label_string_and_single_label(tmp_path, write_wav):
    write_wav("a.wav", seconds=0.1)
    path = write_text(tmp_path / "m.jsonl", json.dumps({"path": "a.wav", "labels": "dog",
                                                        "fold": 3, "group": 7}) + "\n\n")
    m = manifest_file.load(str(path))
    assert m.items[0].labels == ("dog",) and m.items[0].fold == 3 and not m.multi_label
    assert m.items[0].group == "7"  # a speaker id written as a number


def test_manifest_errors_name_the_file_line_and_reason(tmp_path, write_wav):
    write_wav("a.wav", seconds=0.1)
    bad_column = write_text(tmp_path / "x.csv", "file,labels\na.wav,dog\n")
    with pytest.raises(DataError, match=r"x\.csv: missing column\(s\) path"):
        manifest_file.load(str(bad_column))
    bad_split = write_text(tmp_path / "y.csv", "path,labels,split\na.wav,dog,dev\n")
    with pytest.raises(DataError, match=r"y\.csv: line 2: split 'dev'"):
        manifest_file.load(str(bad_split))
    missing = write_text(tmp_path / "z.jsonl", '{"path": "gone.wav", "labels": ["dog"]}\n')
    with pytest.raises(DataError, match=r"z\.jsonl: 1 of 1 .*gone\.wav"):
        manifest_file.load(str(missing))
    not_json = write_text(tmp_path / "w.jsonl", "{oops\n")
    with pytest.raises(DataError, match=r"w\.jsonl: line 1 is not JSON"):
        manifest_file.load(str(not_json))


def test_every_spec_kind_is_registered(tmp_path, write_wav):
    from earmark.data.sources import from_spec, sources

    assert {"fsdd", "esc50", "speechcommands", "fsd50k", "audioset", "desed", "folder",
            "manifest"} <= set(sources())
    m = from_spec(f"desed:{make_desed(tmp_path, write_wav)}")
    assert len(m) == 4


# ---- labels ----------------------------------------------------------------------------------

def test_encode_and_targets_are_multi_hot_in_vocabulary_order():
    assert encode(["rain", "dog"], ["dog", "cat", "rain"]).tolist() == [1.0, 0.0, 1.0]
    assert encode([], {"dog": 0, "cat": 1}).tolist() == [0.0, 0.0]
    with pytest.raises(KeyError, match="'cow'"):
        encode(["cow"], ["dog"])
    m = Manifest([Item("/a", ("cat",)), Item("/b", ("dog", "cat")), Item("/c", ())],
                 labels=["dog", "cat"], multi_label=True)
    assert targets(m).dtype == torch.float32
    assert targets(m).tolist() == [[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert counts(m).tolist() == [1.0, 2.0]
