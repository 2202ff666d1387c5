from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from earmark.evaluate import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    out = plots.plot_confusion_matrix(cm, ["dog", "cat", "owl"], tmp_path / "sub" / "cm.png",
                                      title="fold 1")
    assert out == tmp_path / "sub" / "cm.png"
    width, height = png_size(out)
    assert width > 200 and height > 200
    assert out.stat().st_size > 5_000
    assert os.listdir(out.parent) == ["cm.png"]  # no temporary file left behind


def test_confusion_matrix_many_classes_and_empty_rows(tmp_path):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 5, (40, 40))
    cm[3] = 0  # a class with no clips must not divide by zero
    out = plots.plot_confusion_matrix(cm, [f"class {i}" for i in range(40)], tmp_path / "cm.png")
    assert png_size(out)[0] > 400


def test_per_class_ap_png_skips_undefined_and_limits_rows(tmp_path):
    ap = [0.9, None, 0.2, float("nan"), 0.5] + [0.1] * 60
    labels = [f"c{i}" for i in range(len(ap))]
    short = plots.plot_per_class_ap(ap[:5], labels[:5], tmp_path / "short.png")
    long = plots.plot_per_class_ap(ap, labels, tmp_path / "long.png", top=50)
    assert short.stat().st_size > 5_000
    # One bar row per class shown: 50 rows make a taller figure than 3.
    assert png_size(long)[1] > 2 * png_size(short)[1]


def test_existing_file_is_replaced(tmp_path):
    path = tmp_path / "ap.png"
    path.write_bytes(b"old")
    plots.plot_per_class_ap(np.array([0.3, 0.7]), ["a", "b"], path)
    png_size(path)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="2 labels given for a 3-class"):
        plots.plot_confusion_matrix(np.eye(3), ["a", "b"], tmp_path / "cm.png")
    with pytest.raises(ValueError, match="no class has a defined AP"):
        plots.plot_per_class_ap([None, float("nan")], ["a", "b"], tmp_path / "ap.png")
    assert not list(tmp_path.iterdir())


def test_plots_need_no_display_and_leave_pyplot_alone(tmp_path):
    # An interactive backend that cannot start here (no display): plotting must still work,
    # because it draws on the Agg canvas without pyplot.
    script = textwrap.dedent(f"""
        import sys
        from earmark.evaluate import plots
        plots.plot_confusion_matrix([[1, 0], [1, 2]], ["a", "b"], {str(tmp_path / "cm.png")!r})
        plots.plot_per_class_ap([0.5, 0.8], ["a", "b"], {str(tmp_path / "ap.png")!r})
        assert "matplotlib.pyplot" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    png_size(tmp_path / "cm.png")
    png_size(tmp_path / "ap.png")
