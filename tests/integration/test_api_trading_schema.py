"""Schemathesis against the live trading API's /openapi.json with an admin key: generated requests to every
route (bodies, queries and paths that fit the schema, and ones that do not) never get a 5xx, and every answer
matches the schema the API documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from test_api_trading import TradingServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TradingServer]:
    tmp: Path = tmp_path_factory.mktemp("schema")
    # the limit is raised: the generated requests come faster than a trader's
    with TradingServer(tmp, overrides={"api.rate_limit_per_s": 100_000.0, "api.rate_limit_burst": 100_000}) as s:
        yield s


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_answers_match_the_schema(live: TradingServer, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    headers = {"X-API-Key": live.keys["admin"]}
    tested = []
    statuses: list[int] = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path == "/metrics":
            continue  # Prometheus text, not JSON

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            r = case.call_and_validate(base_url=live.url, headers=headers,
                                       checks=[not_a_server_error, response_schema_conformance])
            statuses.append(r.status_code)

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE, op.label  # a route without inputs has no invalid request
            continue
        tested.append(f"{op.method.upper()} {op.path}")
    assert len(statuses) > 2 * len(tested) and max(statuses) < 500
    if mode == GenerationMode.NEGATIVE:
        assert 422 in statuses
    assert {"POST /v1/orders", "PUT /v1/risk/limits", "POST /token", "GET /v1/greeks/scenarios"} <= set(tested)
