import json
import threading

import pytest

from earmark.files import atomic_path, atomic_write, temporary_name, write_json


def test_temporary_names_are_unique_hidden_and_keep_the_suffix(tmp_path):
    names = {temporary_name(tmp_path / "model.onnx") for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith(".model.") and n.suffix == ".onnx"
               for n in names)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json(tmp_path / "metrics.json", {"accuracy": 0.5})
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write('{"accura')
            raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.wav") as tmp:
            tmp.write_bytes(b"RIFF")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_writers_of_one_file_at_once_each_land_a_whole_file(tmp_path):
    # before, every writer used "<name>.tmp": one writer's rename took the other's half file
    path = tmp_path / "shared.json"
    payloads = [{"writer": i, "rows": list(range(20000))} for i in range(8)]
    errors = []

    def write(data):
        try:
            for _ in range(5):
                write_json(path, data)
        except Exception as err:  # noqa: BLE001 (collected and asserted below)
            errors.append(err)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert json.loads(path.read_text()) in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


def test_atomic_write_refuses_modes_that_do_not_write_a_new_file(tmp_path):
    with pytest.raises(ValueError, match="has no 'w'"):
        with atomic_write(tmp_path / "a.txt", "a"):
            pass


def test_files_written_through_a_library_get_ordinary_permissions(tmp_path):
    import os

    import torch
    from safetensors.torch import save_file

    import earmark
    from earmark.models.directory import save_model_dir

    with atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))  # safetensors makes it 0600
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    ordinary = os.stat(tmp_path / "plain.txt").st_mode & 0o777
    assert os.stat(tmp_path / "w.safetensors").st_mode & 0o777 == ordinary
    model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
    out = save_model_dir(model, tmp_path / "m", ["a", "b"])
    assert os.stat(out / "model.safetensors").st_mode & 0o777 == ordinary
