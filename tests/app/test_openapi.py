"""The API against its own OpenAPI schema (schemathesis): every operation, a bounded number of
generated requests, valid and invalid, with a fixed seed (hypothesis derandomized), signed in
as an admin; every schemathesis check passes: no server error, every status, header, content
type and body as documented, invalid input refused with a 4xx, valid input accepted."""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis
import torch
from fastapi.testclient import TestClient
from schemathesis import Case, GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from tests.app.conftest import bearer

#: generated requests per operation and mode (valid, invalid)
EXAMPLES = 10
#: where a schema-valid request may still be refused with 422 for what no schema can say: an
#: uploaded file's content, a protocol's YAML; there (and for an opaque cursor, which a client
#: only ever gets from a list) "valid data accepted" cannot be checked
CONTENT_CHECKED = {
    "POST /api/v1/models",
    "POST /api/v1/images",
    "POST /api/v1/verify",
    "POST /api/v1/audits",
}


def test_the_api_keeps_its_contract(client: TestClient, tokens: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    # unknown query parameters are ignored (as HTTP APIs do: cache busters), not refused
    schema.config.generation.update(allow_extra_parameters=False)
    headers = bearer(tokens["root"])
    failures: dict[str, str] = {}
    calls = 0

    def check(case: Case[Any]) -> None:
        nonlocal calls
        calls += 1
        unknowable = case.operation.label in CONTENT_CHECKED or "cursor" in (case.query or {})
        excluded = [positive_data_acceptance] if unknowable else []
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    # hypothesis's float strategies need subnormal floats, which tests/conftest.py flushes
    torch.set_flush_denormal(False)
    try:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run = hypothesis.settings(
                    max_examples=EXAMPLES,
                    derandomize=True,
                    deadline=None,
                    database=None,
                    phases=[hypothesis.Phase.generate],
                    suppress_health_check=list(hypothesis.HealthCheck),
                )(hypothesis.given(operation.as_strategy(generation_mode=mode))(check))
                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    assert mode is GenerationMode.NEGATIVE  # nothing in it can be invalid
                except (AssertionError, FailureGroup) as exc:
                    failures[f"{operation.label} ({mode.value})"] = str(exc)
    finally:
        torch.set_flush_denormal(True)  # as tests/conftest.py has it
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert calls >= 200
