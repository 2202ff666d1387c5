import json

import pytest

from earmark.cli import main

TINY = ["--model-arg", "depth=1", "--model-arg", "embed_dim=32", "--model-arg", "num_heads=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synth data set and a tiny model trained on it through the command line."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["synth", str(root / "data"), "--clips-per-class", "4", "--clip-seconds", "0.5",
                 "--soundscapes", "1", "--soundscape-seconds", "2"]) == 0
    assert main(["train", "--data", f"synth:{root / 'data'}", "--out", str(root / "run"),
                 "--epochs", "1", "--clip-seconds", "0.5", "--no-progress", *TINY]) == 0
    return root


def test_synth_and_train_write_their_folders(trained):
    assert (trained / "data" / "clips.csv").is_file()
    assert (trained / "data" / "soundscapes.tsv").is_file()
    assert (trained / "run" / "model" / "config.json").is_file()


def test_tag_skips_bad_files_reports_them_and_exits_non_zero(trained, capsys, tmp_path):
    clips = sorted((trained / "data" / "clips").rglob("*.wav"))[:2]
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"not audio at all")
    code = main(["tag", str(trained / "run"), str(clips[0]), str(bad), str(clips[1]),
                 "--format", "json", "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = json.loads(out)
    assert [r["file"] for r in rows] == [str(clips[0]), str(clips[1])]
    assert len(rows[0]["labels"]) == 2
    assert "corrupt.wav" in err and "1 of 3 files failed" in err


def test_tag_a_folder_per_chunk_as_tsv(trained, capsys):
    scapes = trained / "data" / "soundscapes"
    assert main(["tag", str(trained / "run" / "model"), str(scapes), "--chunk", "1",
                 "--format", "tsv", "--top-k", "1", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "file\tstart\tend\trank\tlabel\tscore"
    assert [ln.split("\t")[1] for ln in lines[1:]] == ["0.000", "1.000"]  # a 2 s soundscape


def test_eval_prints_a_table_and_writes_json_and_plot(trained, capsys, tmp_path):
    code = main(["eval", str(trained / "run"), "--data", f"synth:{trained / 'data'}",
                 "--out", str(tmp_path / "eval"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["num_classes"] == 8
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_a_registry_name_as_json(capsys):
    assert main(["profile", "vit-tiny", "--seconds", "1", "--repeats", "2", "--json",
                 "--num-classes", "10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] > 5e6 and result["flops"] > 0
    assert result["latency_ms"]["median"] > 0


def test_errors_are_reported_without_a_traceback(capsys, tmp_path):
    assert main(["tag", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", "--data", "nosuchkind:/x", "--out", str(tmp_path / "r")]) == 2
    assert "unknown data kind" in capsys.readouterr().err


def test_demo_runs_end_to_end_at_a_small_size(tmp_path, capsys):
    from earmark.demo import run_demo

    result = run_demo(tmp_path / "demo", epochs=1, clips_per_class=4, progress=False)
    out = capsys.readouterr().out
    assert "[demo] done" in out and (tmp_path / "demo" / "eval" / "metrics.json").is_file()
    assert result["metrics"]["num_classes"] == 8


def test_profile_a_model_directory(trained, capsys):
    assert main(["profile", str(trained / "run" / "model"), "--seconds", "0.5", "--batch", "2",
                 "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch"] == 2 and result["seconds"] == 0.5
    assert result["real_time_factor"] > 0


def test_stream_a_file_prints_a_line_per_chunk(tmp_path, capsys, write_wav):
    import torch

    import earmark
    from earmark.models.directory import save_model_dir

    torch.manual_seed(0)
    m = earmark.create_model("sat-tiny", 2, depth=1, embed_dim=48, num_heads=3,
                             chunk_seconds=1.0)
    model_dir = save_model_dir(m.eval(), tmp_path / "sat", ["a", "b"])
    wav = write_wav("x.wav", seconds=3.5)
    assert main(["stream", str(model_dir), str(wav), "--top-k", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[")]
    assert len(lines) == 4 and "ms)" in lines[0]  # 3 chunks and the padded tail
    assert main(["stream", str(model_dir)]) == 2


def clip_list(trained, tmp_path, name, header, cells):
    """A manifest CSV of the synth clips: ``header`` columns after path and labels, one row of
    ``cells(i)`` per clip."""
    from earmark.data.sources import from_spec

    m = from_spec(f"synth:{trained / 'data'}")
    rows = [",".join([it.path, it.labels[0], *cells(i)]) for i, it in enumerate(m.items)]
    path = tmp_path / name
    path.write_text(",".join(["path", "labels", *header]) + "\n" + "\n".join(rows) + "\n")
    return path, len(rows)


def test_eval_without_a_split_column_scores_every_item(trained, capsys, tmp_path):
    path, n = clip_list(trained, tmp_path, "all.csv", [], lambda i: [])
    code = main(["eval", str(trained / "run"), "--data", f"manifest:{path}", "--json",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["num_clips"] == n
    assert f"no split column, so all {n} items are used" in err


def test_eval_of_an_empty_split_names_it_and_the_other_sizes(trained, capsys, tmp_path):
    path, n = clip_list(trained, tmp_path, "train.csv", ["split"], lambda i: ["train"])
    assert main(["eval", str(trained / "run"), "--data", f"manifest:{path}"]) == 2
    assert f"split 'test' is empty (train: {n}, valid: 0)" in capsys.readouterr().err


def test_eval_of_one_group(trained, capsys, tmp_path):
    path, n = clip_list(trained, tmp_path, "g.csv", ["group"], lambda i: ["ab"[i % 2]])
    assert main(["eval", str(trained / "run"), "--data", f"manifest:{path}", "--group", "b",
                 "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_clips"] == n // 2
    assert main(["eval", str(trained / "run"), "--data", f"manifest:{path}", "--group", "z"]) == 2
    assert "no item has group 'z'; groups: a, b" in capsys.readouterr().err


def test_cv_by_group_trains_a_run_per_group_and_prints_a_table(trained, capsys, tmp_path):
    path, n = clip_list(trained, tmp_path, "g.csv", ["group"], lambda i: ["ab"[i % 2]])
    out = tmp_path / "cv"
    assert main(["cv", "--data", f"manifest:{path}", "--out", str(out), "--group-by", "group",
                 "--epochs", "1", "--clip-seconds", "0.5", "--no-progress", *TINY]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["group", "items", "accuracy"]
    assert [ln.split()[:2] for ln in lines[1:3]] == [["a", str(n // 2)], ["b", str(n // 2)]]
    assert any(ln.startswith("accuracy") and "+-" in ln for ln in lines)
    for group in ("a", "b"):
        run = json.loads((out / group / "metrics.json").read_text())
        assert run["holdout"] == {"group_by": "group", "groups": [group], "items": n // 2}
        assert run["test"]["num_clips"] == n // 2
    summary = json.loads((out / "cv_metrics.json").read_text())
    assert set(summary["accuracy"]) == {"mean", "std"} and set(summary["folds"]) == {"a", "b"}


def test_cv_group_options_give_clear_errors(trained, capsys, tmp_path):
    path, _ = clip_list(trained, tmp_path, "g.csv", ["group"], lambda i: ["ab"[i % 2]])
    base = ["cv", "--data", f"manifest:{path}", "--out", str(tmp_path / "cv")]
    assert main([*base, "--group-by", "speaker"]) == 2
    assert "--group-by speaker: the one key is 'group'" in capsys.readouterr().err
    assert main([*base, "--folds", "2"]) == 2
    assert "give --group-by group too" in capsys.readouterr().err
    assert main([*base, "--group-by", "group", "--folds", "3"]) == 2
    assert "cannot make 3 folds of 2 groups" in capsys.readouterr().err
    assert main(["cv", "--data", f"synth:{trained / 'data'}", "--out", str(tmp_path / "cv"),
                 "--group-by", "group"]) == 2
    assert "no item has a group" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()  # nothing trained


def test_eval_picks_the_items_the_run_trained_and_validated_on(trained, capsys, tmp_path,
                                                                monkeypatch):
    import earmark.data.splits as splits
    from earmark.data.sources import from_spec
    from earmark.data.splits import select_split, split_manifest

    def clips(*options):
        assert main(["eval", str(trained / "run"), "--json", "--no-progress", *options]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_clips"]

    # with a fold held out, --split train is every other fold, valid and test the fold
    path, n = clip_list(trained, tmp_path, "f.csv", ["fold"], lambda i: [str(1 + i % 4)])
    spec = f"manifest:{path}"
    assert clips("--data", spec, "--split", "train", "--fold", "2") == n - n // 4
    assert clips("--data", spec, "--split", "valid", "--fold", "2") == n // 4
    # without a fold, the validation items are those the run's seed set aside
    path, n = clip_list(trained, tmp_path, "s.csv", ["split"],
                        lambda i: ["test" if i % 5 == 0 else "train"])
    spec = f"manifest:{path}"
    m = from_spec(spec)
    saved = json.loads((trained / "run" / "model" / "config.json").read_text())
    assert saved["provenance"]["seed"] == 0
    for seed in (0, 7):
        expected = split_manifest(m, None, seed)[1]
        assert select_split(m, "valid", seed=seed).items == expected.items
    assert select_split(m, "valid", seed=0).items != select_split(m, "valid", seed=7).items
    assert clips("--data", spec, "--split", "valid") == len(split_manifest(m, None, 0)[1])
    assert clips("--data", spec, "--split", "train", "--seed", "7") == \
        len(split_manifest(m, None, 7)[0])
    # the seed eval uses by default is the one the model directory records from training
    import shutil

    run7 = tmp_path / "run7"
    shutil.copytree(trained / "run" / "model", run7)
    saved["provenance"]["seed"] = 7
    (run7 / "config.json").write_text(json.dumps(saved))
    used = []
    monkeypatch.setattr(splits, "select_split",
                        lambda *a: used.append(a[-1]) or select_split(*a))
    assert main(["eval", str(run7), "--data", spec, "--split", "valid", "--no-progress"]) == 0
    assert main(["eval", str(run7), "--data", spec, "--split", "valid", "--seed", "3",
                 "--no-progress"]) == 0
    assert used == [7, 3]


def test_batch_commands_finish_the_rest_after_missing_paths(trained, capsys, tmp_path):
    clip = sorted((trained / "data" / "clips").rglob("*.wav"))[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "gone.wav")
    missing = [str(tmp_path / "nosuch.wav"), str(tmp_path / "dangling.wav"),
               str(tmp_path / "empty")]
    model = str(trained / "run" / "model")
    assert main(["tag", model, str(clip), *missing, "--format", "tsv", "--top-k", "1"]) == 1
    out, err = capsys.readouterr()
    assert [ln.split("\t")[0] for ln in out.splitlines()[1:]] == [str(clip)]
    assert "skipped " + str(tmp_path / "nosuch.wav") + ": no such file" in err
    assert "dangling symbolic link" in err and "folder holds no audio" in err
    assert "3 of 4 files failed" in err
    assert main(["detect", model, *missing, str(clip), "--threshold", "0.01"]) == 1
    out, err = capsys.readouterr()
    assert out.strip() and all(ln.startswith(clip.name) for ln in out.splitlines())
    assert "nosuch.wav" in err and "3 of 4 files failed" in err
    # a folder with no audio is said to be one, with exit 1, not a silent 0
    assert main(["tag", model, str(tmp_path / "empty")]) == 1
    assert "folder holds no audio" in capsys.readouterr().err


def test_detect_keeps_files_that_share_a_name(trained, capsys, tmp_path):
    import shutil

    scape = sorted((trained / "data" / "soundscapes").rglob("*.wav"))[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(scape, tmp_path / folder / "x.wav")
    out_tsv = tmp_path / "events.tsv"
    code = main(["detect", str(trained / "run" / "model"), str(tmp_path / "a" / "x.wav"),
                 str(tmp_path / "b" / "x.wav"), "--threshold", "0.01", "--out", str(out_tsv)])
    assert code == 0
    rows = [ln.split("\t") for ln in out_tsv.read_text().splitlines()[1:]]
    names = {r[0] for r in rows}
    assert names == {"a/x.wav", "b/x.wav"}  # relative to the folder that holds both
    a = [r[1:] for r in rows if r[0] == "a/x.wav"]
    assert a == [r[1:] for r in rows if r[0] == "b/x.wav"]  # the same audio, the same events


def test_stream_several_files_goes_on_after_a_bad_one(tmp_path, capsys, write_wav):
    import torch

    import earmark
    from earmark.models.directory import save_model_dir

    torch.manual_seed(0)
    m = earmark.create_model("sat-tiny", 2, depth=1, embed_dim=48, num_heads=3,
                             chunk_seconds=1.0)
    model_dir = save_model_dir(m.eval(), tmp_path / "sat", ["a", "b"])
    one, two = write_wav("one.wav", seconds=2.0), write_wav("two.wav", seconds=1.0)
    code = main(["stream", str(model_dir), str(one), str(tmp_path / "nosuch.wav"), str(two)])
    out, err = capsys.readouterr()
    assert code == 1
    assert [ln for ln in out.splitlines() if ln.startswith("#")] == [f"# {one}", f"# {two}"]
    assert len([ln for ln in out.splitlines() if ln.startswith("[")]) == 3
    assert "skipped " + str(tmp_path / "nosuch.wav") in err


def test_tag_per_chunk_writes_rows_as_it_goes_and_keeps_nothing_per_chunk(
        trained, capfd, tmp_path, monkeypatch):
    import tracemalloc

    import numpy as np
    import soundfile as sf

    import earmark.infer.chunks as chunks
    from earmark.infer.writers import TagWriter

    produced, written_at = [0], []  # chunks scored so far; that count at each write
    scores, write = chunks.iter_chunk_scores, TagWriter._write

    def counting(*args, **kw):
        for c in scores(*args, **kw):
            produced[0] += 1
            yield c

    def recording(self, text, end="\n"):
        written_at.append(produced[0])
        write(self, text, end)

    monkeypatch.setattr(chunks, "iter_chunk_scores", counting)
    monkeypatch.setattr(TagWriter, "_write", recording)
    model = str(trained / "run" / "model")
    rng = np.random.default_rng(0)
    peaks = {}
    for minutes in (1, 8):
        path = tmp_path / f"long{minutes}.wav"
        sf.write(path, (rng.standard_normal(minutes * 60 * 8000) * 0.1).astype("float32"),
                 8000, subtype="PCM_16")
        produced[0], written_at[:] = 0, []
        tracemalloc.start()
        assert main(["tag", model, str(path), "--chunk", "0.5", "--format", "json",
                     "--no-progress"]) == 0
        peaks[minutes] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows = json.loads(capfd.readouterr().out)  # captured to a file, not kept in memory
        n = minutes * 120
        assert len(rows) == n and rows[-1]["end"] == pytest.approx(minutes * 60)
        # "[" before any chunk, each row right after its chunk, "]" at the end
        assert written_at == [0, *range(1, n + 1), n]
    # 8x the chunks, about the same Python memory at the peak (before: every row was kept)
    assert peaks[8] < 1.2 * peaks[1], peaks


def test_progress_bars_only_on_a_terminal_or_when_asked(trained, capsys):
    clips = [str(p) for p in sorted((trained / "data" / "clips").rglob("*.wav"))[:3]]
    model = str(trained / "run" / "model")
    assert main(["tag", model, *clips]) == 0  # stderr is captured here: not a terminal
    assert "tag:" not in capsys.readouterr().err
    assert main(["tag", model, *clips, "--progress"]) == 0
    assert "tag: 100%" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["tag", model, *clips, "--progress", "--no-progress"])
    assert err.value.code == 2
    assert "--no-progress: not allowed with argument --progress" in capsys.readouterr().err


def test_every_subcommand_and_option_explains_itself():
    import argparse

    from earmark.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, f"earmark {name} --help says nothing first"
        for action in p._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"earmark {name}: {action.dest} has no help"
        text = p.format_help()
        assert "paper 00" not in text, name  # papers by title
    assert "(default: 5)" in sub.choices["tag"].format_help()


def test_eval_goes_on_past_a_missing_file_and_exits_1(trained, capsys, tmp_path):
    path, n = clip_list(trained, tmp_path, "all.csv", [], lambda i: [])
    lines = path.read_text().splitlines()
    gone = str(tmp_path / "gone.wav")
    lines[1] = gone + "," + lines[1].split(",", 1)[1]  # the first clip's file is missing
    path.write_text("\n".join(lines) + "\n")
    code = main(["eval", str(trained / "run"), "--data", f"manifest:{path}", "--json",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out.strip().splitlines()[-1])["num_clips"] == n - 1
    assert f"skipped {gone}" in err and f"1 of {n} files failed" in err
    # training still refuses a data set with files missing, at once and naming them
    from earmark.data.sources import from_spec
    from earmark.errors import DataError

    with pytest.raises(DataError, match="1 of .* listed audio files are missing"):
        from_spec(f"manifest:{path}")


def test_model_commands_take_threads_and_stream_defaults_to_one(trained, monkeypatch):
    import torch

    import earmark.cli as cli
    from earmark.cli.use import cmd_tag

    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command in ("tag", "detect", "eval", "stream"):
        assert any(a.dest == "model_threads" for a in commands[command]._actions), command
    assert parser.parse_args(["stream", "m", "f.wav"]).model_threads == 1  # a chunk: 1 thread
    assert parser.parse_args(["tag", "m", "f.wav"]).model_threads is None  # torch's default
    seen = []

    def spy(a):
        seen.append(torch.get_num_threads())
        return cmd_tag(a)

    commands["tag"].set_defaults(fn=spy)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        clip = sorted((trained / "data" / "clips").rglob("*.wav"))[0]
        assert main(["tag", str(trained / "run" / "model"), str(clip), "--threads", "1"]) == 0
        assert seen == [1] and torch.get_num_threads() == 2  # set for the command, restored
    finally:
        torch.set_num_threads(before)


def test_chunk_means_seconds_of_audio_per_chunk_in_every_command():
    from earmark.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    having = sorted(name for name, p in commands.items()
                    if any("--chunk" in a.option_strings for a in p._actions))
    assert having == ["detect", "export", "serve", "stream", "tag"]
    for name in having:
        text = " ".join(commands[name].format_help().split())
        assert "--chunk CHUNK seconds of audio per chunk:" in text, name
