"""The arrays behind an audit's figures, written beside ``results.json`` by the sandboxed run and
read back by the trusted process that draws them (the figures are drawn outside the jail).

Two files: ``figure_data.json`` holds each test's figure structure (dicts, lists, numbers,
strings) with every array replaced by ``{"$array": "<key>"}``, and ``figure_data.npz`` the
arrays under those keys (``numpy.savez``: uncompressed, no pickles). Reading checks both
files' sizes and the archive's declared expansion (:func:`reconstruction.bounded.check_zip`)
before anything is parsed, loads with ``allow_pickle=False``, and accepts numeric arrays only;
the service reads them in a process of their own under the jail's limits
(``python -m app.report.figures``), never in the worker.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reconstruction.bounded import ExpansionError, check_zip
from reconstruction.instability.common import TestResult

__all__ = [
    "ARRAYS",
    "FIGURE_DATA_SCHEMA",
    "MAX_FIGURE_DATA_BYTES",
    "STRUCTURE",
    "FigureData",
    "FigureDataError",
    "read_figure_data",
    "write_figure_data",
]

FIGURE_DATA_SCHEMA = "recon-audit/figure-data/v2"
STRUCTURE = "figure_data.json"
ARRAYS = "figure_data.npz"
#: the most the two files may weigh together (and the arrays expand to): a large audit's
#: (hundreds of images) fit; the worker reads them in a process under the jail's memory limit
MAX_FIGURE_DATA_BYTES = 4 * 2**30
_ARRAY = "$array"
#: numeric kinds only: bool, signed and unsigned integers, floats, complex
_KINDS = frozenset("biufc")


class FigureDataError(ValueError):
    """The figure data is missing, too large or malformed."""


@dataclass(frozen=True)
class FigureData:
    """What the figures are drawn from: the prepared ground truth ``[B, H, W]`` and, per test,
    its figure structure (:attr:`reconstruction.instability.common.TestResult.figures`)."""

    truth: np.ndarray
    tests: dict[str, dict[str, Any]]

    def test_results(self, document: dict[str, Any]) -> dict[str, TestResult]:
        """The tests of a results document (``tests``: verdict, reason and numbers), each with
        its figure arrays: what the figures read."""
        out = {}
        for name, block in document["tests"].items():
            numbers = {k: v for k, v in block.items() if k not in ("verdict", "reason")}
            out[name] = TestResult(
                name, block["verdict"], block["reason"], numbers, self.tests.get(name, {})
            )
        return out


def write_figure_data(truth: np.ndarray, tests: dict[str, TestResult], out: Path) -> None:
    """Write the figure data of ``tests`` and ``truth`` into ``out``."""
    arrays: dict[str, np.ndarray] = {"truth": np.asarray(truth)}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {_ARRAY: key}
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [encode(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    structure = {
        "schema": FIGURE_DATA_SCHEMA,
        "truth": {_ARRAY: "truth"},
        "tests": {name: encode(test.figures) for name, test in tests.items()},
    }
    (out / STRUCTURE).write_text(json.dumps(structure))
    np.savez(out / ARRAYS, allow_pickle=False, **arrays)


def read_figure_data(out: Path, max_bytes: int = MAX_FIGURE_DATA_BYTES) -> FigureData:
    """The figure data in ``out`` (regular files, of bounded size); :class:`FigureDataError`
    when it is missing, too large or malformed."""
    paths = [out / STRUCTURE, out / ARRAYS]
    for path in paths:
        if path.is_symlink() or not path.is_file():
            raise FigureDataError(f"{path.name} is missing or not a regular file")
    if sum(path.stat().st_size for path in paths) > max_bytes:
        raise FigureDataError(f"the figure data is over {max_bytes} bytes")
    try:
        check_zip(paths[1], max_bytes)
        structure = json.loads(paths[0].read_text())
        with np.load(paths[1], allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ExpansionError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise FigureDataError(f"the figure data cannot be read: {exc}") from exc
    if not isinstance(structure, dict) or structure.get("schema") != FIGURE_DATA_SCHEMA:
        raise FigureDataError(f"{STRUCTURE} is not {FIGURE_DATA_SCHEMA}")
    for key, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise FigureDataError(f"the figure archive's member {key} is not an array")
        if array.dtype.kind not in _KINDS:
            raise FigureDataError(f"the figure array {key} is not numeric ({array.dtype})")

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARRAY}:
                if value[_ARRAY] not in arrays:
                    raise FigureDataError(f"no figure array {value[_ARRAY]!r}")
                return arrays[value[_ARRAY]]
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    tests = structure.get("tests")
    if not isinstance(tests, dict) or not all(isinstance(t, dict) for t in tests.values()):
        raise FigureDataError(f"{STRUCTURE} holds no tests")
    truth = decode(structure.get("truth"))
    if not isinstance(truth, np.ndarray) or truth.ndim != 3:
        raise FigureDataError("the figure data's truth is not a [B, H, W] array")
    return FigureData(truth, {name: decode(test) for name, test in tests.items()})
