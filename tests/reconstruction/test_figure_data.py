"""The figures' arrays as a jailed run writes them and the worker reads them back: the same
structure and values, and nothing but numeric arrays, within bounds, from regular files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reconstruction.figure_data import FigureDataError, read_figure_data, write_figure_data
from reconstruction.instability.common import TestResult as Result

TRUTH = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)


def _written(tmp_path: Path) -> Path:
    figures = {
        "threat_models": {"image": {"clean": {"network": np.ones((2, 4, 4), np.complex64)}}},
        "curve": (0.5, np.float32(0.25), 3),
        "mask": torch.ones(4, dtype=torch.bool),
        "note": "text",
        "nothing": None,
    }
    tests = {
        "perturbation": Result("perturbation", "unstable", "r", {"eps": [0.01]}, figures),
        "sampling": Result("sampling", "skipped", "not run"),
    }
    write_figure_data(TRUTH, tests, tmp_path)
    return tmp_path


def test_written_and_read_back_it_is_the_same(tmp_path: Path) -> None:
    data = read_figure_data(_written(tmp_path))
    np.testing.assert_array_equal(data.truth, TRUTH)
    figures = data.tests["perturbation"]
    clean = figures["threat_models"]["image"]["clean"]["network"]
    assert clean.dtype == np.complex64
    np.testing.assert_array_equal(clean, np.ones((2, 4, 4), np.complex64))
    assert figures["curve"] == [0.5, 0.25, 3]
    assert figures["mask"].dtype == np.bool_
    assert (figures["note"], figures["nothing"]) == ("text", None)
    assert data.tests["sampling"] == {}
    document = {
        "tests": {
            "perturbation": {"verdict": "unstable", "reason": "r", "eps": [0.01]},
            "sampling": {"verdict": "skipped", "reason": "not run"},
        }
    }
    tests = data.test_results(document)
    assert tests["perturbation"].numbers == {"eps": [0.01]}
    assert tests["perturbation"].figures is figures
    assert tests["sampling"].verdict == "skipped"


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    out = _written(tmp_path)
    np.savez(out / "figure_data.npz", truth=TRUTH, a1=np.array([{"x": 1}], dtype=object))
    with pytest.raises(FigureDataError, match="cannot be read"):  # allow_pickle=False
        read_figure_data(out)


def test_links_oversized_and_malformed_files_are_refused(tmp_path: Path) -> None:
    out = _written(tmp_path)
    with pytest.raises(FigureDataError, match="over 100 bytes"):
        read_figure_data(out, max_bytes=100)
    structure = json.loads((out / "figure_data.json").read_text())
    structure["tests"]["perturbation"]["ghost"] = {"$array": "a99"}
    (out / "figure_data.json").write_text(json.dumps(structure))
    with pytest.raises(FigureDataError, match="no figure array 'a99'"):
        read_figure_data(out)
    (out / "figure_data.json").write_text(json.dumps({"schema": "other", "tests": {}}))
    with pytest.raises(FigureDataError, match="is not recon-audit/figure-data/v2"):
        read_figure_data(out)
    (out / "figure_data.json").unlink()
    (out / "figure_data.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(FigureDataError, match="not a regular file"):
        read_figure_data(out)
    (out / "figure_data.json").unlink()
    (out / "figure_data.npz").write_bytes(b"PK not a zip")
    structure["tests"] = {}
    (out / "figure_data.json").write_text(json.dumps(structure))
    with pytest.raises(FigureDataError, match="cannot be read"):
        read_figure_data(out)


def test_an_archive_member_that_is_no_array_is_refused(tmp_path: Path) -> None:
    out = _written(tmp_path)
    with zipfile.ZipFile(out / "figure_data.npz", "a") as archive:
        archive.writestr("notes.txt", b"not an array")
    with pytest.raises(FigureDataError, match=r"member notes\.txt is not an array"):
        read_figure_data(out)
