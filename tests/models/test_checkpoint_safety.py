"""Checkpoints are pickles: earmark reads weights and plain values only unless told to trust
a file, so converting or loading a downloaded checkpoint cannot run code hidden in it."""

import pytest
import torch

import earmark
from earmark.cli import main
from earmark.errors import ModelError
from earmark.models.convert import convert
from earmark.models.directory import load_checkpoint
from tests.models.test_htsat import official_state, tiny


class Payload:
    """Unpickling this object creates a file: a stand-in for code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def booby_trapped(tmp_path):
    """An HTS-AT checkpoint in the official layout whose hyper-parameters run code."""
    state = official_state(tiny(num_classes=3))
    state["hyper_parameters"] = {"config": Payload(tmp_path / "code-ran")}
    path = tmp_path / "downloaded.ckpt"
    torch.save(state, path)
    return path, tmp_path / "code-ran"


def test_convert_refuses_pickled_objects_and_runs_nothing(booby_trapped, tmp_path):
    path, marker = booby_trapped
    with pytest.raises(ModelError, match=r"downloaded\.ckpt.*arbitrary code.*--trust-checkpoint"):
        convert("htsat-official", path, tmp_path / "out", labels=["a", "b", "c"])
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_cli_convert_says_why_and_trust_is_explicit(booby_trapped, tmp_path, capsys):
    path, marker = booby_trapped
    out = tmp_path / "out"
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert main(["convert", "htsat-official", str(path), str(out), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert "io.open" in err and "--trust-checkpoint" in err  # names what it refused
    assert not marker.exists() and not out.exists()
    # the user vouches for the file: it is unpickled (the payload runs) and converted
    assert main(["convert", "htsat-official", str(path), str(out), "--labels", str(labels),
                 "--trust-checkpoint"]) == 0
    assert marker.exists()
    assert earmark.load(out).labels == ["a", "b", "c"]


def test_load_of_a_ckpt_refuses_pickled_objects(tmp_path):
    model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "earmark_model": {"name": "vit-tiny"}, "extra": Payload(tmp_path / "code-ran")}
    torch.save(ckpt, tmp_path / "run.ckpt")
    with pytest.raises(ModelError, match="arbitrary code"):
        earmark.load(tmp_path / "run.ckpt")
    assert not (tmp_path / "code-ran").exists()


def test_weights_and_plain_values_load_without_trust(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3, "name": "x"}, tmp_path / "ok.pt")
    obj = load_checkpoint(tmp_path / "ok.pt")
    assert obj["epoch"] == 3 and torch.equal(obj["state_dict"]["w"], torch.ones(2))


def test_a_file_that_is_no_checkpoint_is_named(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.ckpt: not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.ckpt")
