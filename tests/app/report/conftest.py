"""The report's fixtures: the full run rendered once with its PDF, and a run whose perturbation
and sampling tests are skipped rendered without one."""

from __future__ import annotations

import pytest

from app.report import ReportFiles, write_report
from reconstruction.suite import SuiteResult
from tests.app.report.runs import PROTOCOL, PROTOCOL_SKIPPING, suite


@pytest.fixture(scope="session")
def result() -> SuiteResult:
    return suite(PROTOCOL)


@pytest.fixture(scope="session")
def report(result: SuiteResult, tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(result, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="session")
def skipping(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuiteResult, ReportFiles]:
    result = suite(PROTOCOL_SKIPPING)
    return result, write_report(result, tmp_path_factory.mktemp("skipping"), pdf=False)
