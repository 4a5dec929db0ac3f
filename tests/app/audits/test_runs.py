"""What the worker takes from a jailed run (one intake for whole audits and shards): a bounded
results document and the figures' arrays (bounded, numeric, regular files), from which the
worker draws the figures itself; and what an audit's stored ``error`` says: the jail's reduced
message as it is, anything else as its type and a sanitised excerpt (no internal paths, no long
tokens)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.audits import runs
from app.audits.runs import RunFailed, image_args, intake, message
from app.sandbox import SandboxUnavailable
from reconstruction.figure_data import FIGURE_DATA_SCHEMA, write_figure_data
from reconstruction.suite import SuiteResult
from tests.app.report.runs import PROTOCOL_SKIPPING, suite


@pytest.fixture(scope="module")
def run() -> SuiteResult:
    """A small run: the structural test ran (one detail), the others skipped."""
    return suite(PROTOCOL_SKIPPING)


@pytest.fixture
def out(tmp_path: Path, run: SuiteResult) -> Path:
    """A jailed run's outputs: results.json and the figures' arrays."""
    folder = tmp_path / "out"
    folder.mkdir()
    write_figure_data(run.truth, run.tests, folder)
    (folder / "results.json").write_text(json.dumps(run.to_json()))
    return folder


def test_the_intake_takes_the_results_and_checks_the_figure_files(
    tmp_path: Path, out: Path
) -> None:
    (out / "notes.txt").write_text("ignored")
    taken = intake(out)
    assert taken.results == json.loads((out / "results.json").read_text())
    assert taken.results["tests"]["structural"]["verdict"] != "skipped"
    assert taken.out == out
    (out / "figure_data.npz").unlink()
    (out / "figure_data.npz").symlink_to(tmp_path / "elsewhere.npz")
    with pytest.raises(RunFailed, match=r"figure_data\.npz as a regular file"):
        intake(out)


def test_the_worker_draws_a_runs_figures_in_a_process_of_its_own(tmp_path: Path) -> None:
    """The figures drawn from a run's arrays (in a process under the jail's limits) are the
    ones drawn from the run itself."""
    from app.report import write_figures
    from tests.app.report.runs import PROTOCOL

    result = suite(PROTOCOL)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(result.to_json()))
    write_figure_data(result.truth, result.tests, out)
    drawn = intake(out).draw(tmp_path / "drawn")
    direct = write_figures(result.tests, result.truth, tmp_path / "direct")
    assert list(drawn) == list(direct)
    for name, path in drawn.items():
        assert path.read_bytes() == direct[name].read_bytes(), name


def test_hostile_figure_data_fails_the_drawing_not_the_worker(
    tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's figure structure that expands to gigabytes when parsed (ten million panels):
    the drawing process meets its memory limit and the audit fails with the service's words;
    the worker never parses it."""
    from app.settings import get_settings

    (out / "figure_data.json").write_text(
        f'{{"schema": "{FIGURE_DATA_SCHEMA}", "truth": {{"$array": "truth"}}, '
        '"tests": {"structural": {"panels": [' + ",".join(["{}"] * 10_000_000) + "]}}}"
    )
    monkeypatch.setenv("RECON_AUDIT_SANDBOX_MEMORY_BYTES", str(2 * 2**30))
    get_settings.cache_clear()
    try:
        with pytest.raises(RunFailed, match=r"^the figures could not be drawn: ") as caught:
            intake(out).draw(tmp_path / "drawn")
    finally:
        get_settings.cache_clear()
    assert "memory" in str(caught.value)
    assert str(tmp_path) not in str(caught.value)
    assert not any((tmp_path / "drawn").glob("*.png"))


def test_the_intake_refuses_links_and_what_is_not_a_results_document(
    tmp_path: Path, out: Path
) -> None:
    document = json.loads((out / "results.json").read_text())
    (out / "results.json").rename(tmp_path / "elsewhere.json")
    (out / "results.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(RunFailed, match="regular file"):
        intake(out)
    (out / "results.json").unlink()
    (out / "results.json").write_text("[1, 2]")
    with pytest.raises(RunFailed, match="not a results document"):
        intake(out)
    # what our writer cannot have written: a number as text, a field the schema lacks
    document["tests"]["structural"]["counts"]["details"] = "1"
    (out / "results.json").write_text(json.dumps(document))
    with pytest.raises(RunFailed, match=r"not a results document \(recon-audit/results/v1\)"):
        intake(out)
    document["tests"]["structural"]["counts"]["details"] = 1
    document["tests"]["structural"]["counts"]["hidden"] = 1
    (out / "results.json").write_text(json.dumps(document))
    with pytest.raises(RunFailed, match="not a results document"):
        intake(out)
    (out / "results.json").write_text("{not json")
    with pytest.raises(RunFailed, match="not JSON"):
        intake(out)


def test_the_intake_refuses_oversized_outputs(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "MAX_RESULTS_BYTES", 10)
    with pytest.raises(RunFailed, match="over 10 bytes"):
        intake(out)
    monkeypatch.undo()
    (out / "figure_data.npz").unlink()
    with pytest.raises(RunFailed, match=r"did not write figure_data\.npz"):
        intake(out)


def test_failure_messages_carry_no_paths_or_secrets() -> None:
    reduced = "the audit run failed: the memory limit was exceeded (MemoryError)"
    assert message(RunFailed(reduced)) == reduced
    # anyone else's RuntimeError (a library's) is sanitised like any exception
    assert message(RuntimeError("in /data/store/tmp/x")) == "RuntimeError: in"
    unavailable = SandboxUnavailable("untrusted models run only in a jail, and it is unavailable")
    assert message(unavailable) == str(unavailable)
    leaked = message(
        FileNotFoundError(2, "No such file", "/data/store/tmp/audit-1/-----BEGIN PRIVATE KEY")
    )
    assert leaked.startswith("FileNotFoundError: [Errno 2] No such file")
    assert "/data" not in leaked
    assert "BEGIN" not in leaked


def test_a_series_is_handed_to_the_run_as_one_folder(tmp_path: Path) -> None:
    from app.storage import Store
    from reconstruction.data import read_images
    from tests.reconstruction.measured_files import write_dicom_series

    store = Store(tmp_path / "store")
    means = write_dicom_series(tmp_path / "series", [1, 0, 2])
    members = [
        {"name": p.name, "sha256": store.add(p), "size": 0}
        for p in sorted((tmp_path / "series").iterdir())
    ]
    (tmp_path / "x.npy").write_bytes(b"")
    records: list[dict[str, Any]] = [
        {"name": "series-1", "series": members, "slices": "all"},
        {"name": "x.npy", "sha256": store.add(tmp_path / "x.npy"), "slices": "all"},
    ]
    job = tmp_path / "job"
    job.mkdir()
    args = image_args(store, records, job)
    assert args == ["--images", "images/series-1", "--images", "images/x.npy", "--slices", "all"]
    assert sorted(p.name for p in (job / "images" / "series-1").iterdir()) == [
        "file0.dcm",
        "file1.dcm",
        "file2.dcm",
    ]
    volume = read_images(job / "images" / "series-1")
    assert len(volume) == 1
    assert float(volume[0].array.mean()) == means[1]  # the middle slice, in instance order
