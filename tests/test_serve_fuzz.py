"""`dalle serve`'s API fuzzed from its own OpenAPI schema (Schemathesis): a real server on
127.0.0.1 with the tiny random pipeline gets requests generated from /openapi.json, valid and
not, and must answer each without a server error and as its schema says (status codes, bodies,
content types). Bounded: a few dozen requests per operation."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from dalle.serve import create_app
from helpers import serving
from test_pipeline import tiny_pipeline

schemathesis = pytest.importorskip("schemathesis", reason="the schemathesis package is not installed")

from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

EXAMPLES = 100  # per API operation


@pytest.fixture(scope="module")
def api_schema():
    with serving(create_app(tiny_pipeline(), max_queue=2, time_limit_s=10)) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def fuzz(operation, mode, sent: dict) -> None:
    """EXAMPLES cases of one operation, each sent and checked: valid by the schema (positive) or
    not (negative, which must be refused with a 4xx)."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def answers(case):
        # Every check but "schema-valid data is accepted": a prompt of characters the model's
        # captions never used is valid by the schema, and refused with 422 by design.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])
        key = f"{mode.value} {operation.label}"
        sent[key] = sent.get(key, 0) + 1

    answers()


def test_every_request_the_schema_allows_gets_a_documented_answer(api_schema):
    # The cases are drawn here rather than by schemathesis' pytest plugin, whose parametrization
    # this pytest version does not support.
    sent: dict[str, int] = {}
    for result in api_schema.get_all_operations():
        for mode in GenerationMode:
            try:
                fuzz(result.ok(), mode, sent)
            except Unsatisfiable:  # an operation without parameters has no invalid requests
                assert mode is GenerationMode.NEGATIVE

    # Every operation was exercised: one without parameters needs a single request (and has no
    # invalid ones), the others got many; a path parameter that takes any string has no invalid
    # values either.
    assert sent.pop("positive GET /api/health") >= 1
    assert all(n >= EXAMPLES // 2 for n in sent.values()), sent
    assert sum(k.startswith("positive") for k in sent) == 4 and "negative POST /api/generate" in sent, sent
