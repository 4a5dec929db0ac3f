"""``python -m reconstruction.run``: the science as the jail runs it. ``inspect`` prints a
network's summary; ``audit`` writes results.json and the figures' arrays, nothing else; bad
input exits 2 with ``Error: <message>``, as the ``recon-audit`` command line does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconstruction.run import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "automap-mri"


def test_inspect_prints_the_networks_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["inspect", str(EXAMPLE / "model.onnx"), "--manifest", str(EXAMPLE / "manifest.json")])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "onnx"


def test_an_audit_writes_results_and_figure_data_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = ["audit", str(EXAMPLE / "model.onnx"), "--manifest", str(EXAMPLE / "manifest.json")]
    assert main([*args, "--only", "sampling", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "figure_data.json",
        "figure_data.npz",
        "results.json",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["verdicts"]["perturbation"] == "skipped"
    progress = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert progress
    assert all(set(line) == {"progress"} for line in progress)


def test_bad_input_exits_2_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(EXAMPLE / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps({"modality": "mri"}))
    args = ["inspect", str(tmp_path / "model.onnx"), "--manifest", str(tmp_path / "manifest.json")]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("Error: ")
    audit = ["audit", str(EXAMPLE / "model.onnx"), "--manifest", str(EXAMPLE / "manifest.json")]
    assert main([*audit, "--protocol", "nonesuch", "--out", str(tmp_path / "out")]) == 2
    assert "Error: " in capsys.readouterr().err
    missing = str(tmp_path / "missing.png")
    assert main([*audit, "--images", missing, "--out", str(tmp_path / "out")]) == 2
    assert "Error: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_module_exits_with_its_status_and_every_byte_written(tmp_path: Path) -> None:
    """``python -m reconstruction.run`` skips the interpreter's teardown (:func:`exit_now`):
    its exit status, and what it wrote to a pipe, are still all there."""
    module = [sys.executable, "-m", "reconstruction.run"]
    bad = subprocess.run(
        [
            *module,
            "inspect",
            str(tmp_path / "none.onnx"),
            "--manifest",
            str(EXAMPLE / "manifest.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("Error: ")
    probe = (
        "import sys\nfrom reconstruction.run import exit_now\n"
        "sys.stdout.write('x' * 200000)\nexit_now(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False)
    assert done.returncode == 3
    assert done.stdout == b"x" * 200000


def test_images_summarises_a_set_without_loading_torch(tmp_path: Path) -> None:
    """The service's check of uploaded data: every entry's summary as JSON, or the refusal
    with its field; a data check loads neither torch nor the networks' runtimes."""
    from tests.reconstruction.measured_files import write_dicom_series, write_fastmri

    write_fastmri(tmp_path / "knee.h5", slices=3)
    write_dicom_series(tmp_path / "series", [2, 0, 1])
    for dicom in (tmp_path / "series").iterdir():
        dicom.rename(tmp_path / dicom.name)
    names = ["knee.h5", *sorted(p.name for p in tmp_path.glob("*.dcm"))]
    script = (
        "import sys\nfrom reconstruction.run import main\ncode = main(sys.argv[1:])\n"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))\n"
        "sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "images", *names, "--slices", "all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    summary, loaded = done.stdout.splitlines()
    assert loaded == "[]"
    entries = json.loads(summary)["entries"]
    assert [e["files"] for e in entries] == [["knee.h5"], names[1:]]
    assert [e["images"] for e in entries] == [3, 3]
    assert [e["measured"] for e in entries] == [True, False]
    refused = subprocess.run(
        [sys.executable, "-m", "reconstruction.run", "images", "knee.h5", "--slices", "7"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["refused"]["field"] == "slices"
    assert refused.stderr.startswith("Error: knee.h5: slices '7' out of range")
