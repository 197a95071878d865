"""schemathesis against the served OpenAPI document: every operation, with valid
credentials and without. No 5xx, every error a problem+json, every status documented."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.e2e.conftest import Stack

# Operations that answer in another format on purpose.
NOT_JSON = {"/metrics"}


def problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code >= 400:
        value = response.headers.get("content-type", [""])
        value = value[0] if isinstance(value, list) else value
        assert value.startswith("application/problem+json"), (
            f"{case.method} {case.formatted_path}: {response.status_code} answered as "
            f"{value!r}: {response.text[:200]}"
        )
    return None


CHECKS = [not_a_server_error, status_code_conformance, problem_json_errors]


def operations(stack: Stack) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{stack.url}/schema/openapi.json")
    return [r.ok() for r in schema.get_all_operations()]


def fuzz(stack: Stack, headers: dict[str, str], examples: int) -> int:
    ran = 0
    for operation in operations(stack):
        if operation.path in NOT_JSON:
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def run(case: Any) -> None:
            case.call_and_validate(base_url=stack.url, headers=headers, checks=CHECKS)

        run()
        ran += 1
    return ran


@pytest.mark.timeout(600)
def test_every_operation_with_credentials(stack: Stack) -> None:
    headers = stack.user("live:read live:write integration:manage integration:verify").headers
    assert fuzz(stack, headers, 20) >= 10


@pytest.mark.timeout(600)
def test_every_operation_without_credentials(stack: Stack) -> None:
    assert fuzz(stack, {}, 5) >= 10
