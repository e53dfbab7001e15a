"""Schemathesis against /api/openapi.json of a real daemon with real mail in its log: whatever
the API is sent, no 5xx, and every answer fits the OpenAPI description (status, content type,
body schema). Bounded: a fixed number of examples per operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.web import Scene, mail_scene

EXAMPLES = 40  # per operation: ~12 operations, a minute or so on this machine


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with mail_scene(tmp_path_factory.mktemp("fuzz")) as s:
        yield s


@pytest.fixture(scope="module")
def http(scene: Scene) -> Iterator[requests.Session]:
    """A session with its cookie and CSRF token, so that POSTs get past the CSRF check and
    reach the queue code (fuzzed headers may still replace the token: then 403, documented)."""
    with requests.Session() as s:
        token = s.get(scene.daemon.http_url + "api/whoami", timeout=10).json()["csrf_token"]
        s.headers["X-CSRF-Token"] = token
        yield s


def _app_schema() -> dict:
    """The OpenAPI description is static: build it from the app itself at import time (the
    lazy fixture loader of schemathesis does not work with pytest 9), and check below that the
    running server serves exactly this one."""
    from mailferry.config import HttpConfig
    from mailferry.web.app import create_app
    from mailferry.web.services import WebServices

    return create_app(WebServices(http=HttpConfig(), log_dir=Path("/nonexistent"))).openapi()


SPEC = _app_schema()
schema = schemathesis.openapi.from_dict(SPEC)


def test_served_description_is_the_fuzzed_one(scene: Scene) -> None:
    served = requests.get(scene.daemon.http_url + "api/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == SPEC


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails(case, http: requests.Session, scene: Scene) -> None:
    checks = [response_schema_conformance, status_code_conformance, content_type_conformance]
    response = case.call_and_validate(base_url=scene.daemon.http_url.rstrip("/"),
                                      session=http, checks=checks)
    # schemathesis' not_a_server_error, said plainly
    assert response.status_code < 500, (case.operation.path, response.text[:500])
