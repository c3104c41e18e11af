"""Who may call: the bearer token's loading, parsing and comparison, and the service's 401s on
every route it dispatches. No Ray, no network."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from cascade.errors import CascadeError
from cascade.serving import (
    OPEN_HEALTH,
    AppArgs,
    BearerAuth,
    HttpReply,
    InferenceService,
    ServingLimits,
    bearer_header,
    load_token,
)

TOKEN = "s3cret-Token_0123456789~+/=="


def test_load_token_reads_a_file_once_stripped_or_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert load_token(file=path) == TOKEN
    monkeypatch.setenv("MY_TOKEN", TOKEN + "\n")
    assert load_token(env="MY_TOKEN") == TOKEN


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("", "is empty: it must hold the token"),
        ("  \n", "is empty: it must hold the token"),
        ("two words", "the token must be letters, digits and -._~+/"),
        ("tok\u00e9n", "the token must be letters, digits and -._~+/"),
    ],
)
def test_a_bad_token_is_refused_naming_its_source_never_its_content(
    tmp_path: Path, content: str, error: str
) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(CascadeError) as caught:
        load_token(file=path)
    assert str(caught.value).startswith(f"token file {path}")
    assert error in str(caught.value)
    if content.strip():
        assert content.strip() not in str(caught.value)


def test_missing_sources_say_where_the_token_was_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CascadeError, match=r"token file .*nope: cannot read it"):
        load_token(file=tmp_path / "nope")
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    with pytest.raises(CascadeError, match="environment variable NO_SUCH_TOKEN_VAR is not set"):
        load_token(env="NO_SUCH_TOKEN_VAR")
    with pytest.raises(CascadeError, match="exactly one of"):
        load_token()
    with pytest.raises(
        ValueError, match=r"token_file \(/t\) and token_env \(T\) exclude each other"
    ):
        ServingLimits(policies=["p.yaml"], token_file="/t", token_env="T")


def test_settings_without_a_token_let_anyone_call_and_hide_the_token_in_repr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert AppArgs(policies=["p.yaml"]).auth() is None
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    auth = AppArgs(policies=["p.yaml"], token_env="MY_TOKEN", open_health=False).auth()
    assert auth is not None and auth.open_paths == frozenset()
    assert TOKEN not in repr(auth) and "MY_TOKEN" in repr(
        AppArgs(policies=["p"], token_env="MY_TOKEN")
    )


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, None),
        ("", None),
        (f"Basic {TOKEN}", "invalid_request"),
        ("Bearer", "invalid_token"),
        ("Bearer wrong", "invalid_token"),
        (f"Bearer {TOKEN}x", "invalid_token"),
        (f"Bearer {TOKEN[:-1]}", "invalid_token"),
        ("Bearer t\u00f6ken", "invalid_token"),
    ],
)
def test_refusals_say_what_is_missing_or_wrong(header: str | None, why: str | None) -> None:
    auth = BearerAuth(TOKEN)
    headers = {} if header is None else {"authorization": header}
    refusal = auth.refusal("/v2/models/digits/infer", headers)
    assert refusal is not None
    assert refusal.challenge.startswith('Bearer realm="cascade"')
    assert (f'error="{why}"' in refusal.challenge) if why else ("error=" not in refusal.challenge)
    assert TOKEN not in refusal.message and "wrong" not in refusal.message


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_the_scheme_is_case_insensitive(header: str) -> None:
    assert BearerAuth(TOKEN).refusal("/v2", {"authorization": header}) is None


def _service(*, open_health: bool = True) -> InferenceService:
    return InferenceService(auth=BearerAuth(TOKEN, OPEN_HEALTH if open_health else frozenset()))


def _call(svc: InferenceService, method: str, path: str, headers: dict[str, str]) -> HttpReply:
    async def read() -> bytes:
        raise AssertionError("a refused request's body is never read")

    return asyncio.run(svc.handle(method, path, headers, read))


def _every_route(svc: InferenceService) -> list[tuple[str, str]]:
    return [(m, p.replace("{name}", "digits")) for m, p in svc.routes] + [
        ("GET", "/no/such/route"),
        ("DELETE", "/v2"),
        ("HEAD", "/v2/models/digits/"),
    ]


def test_every_route_but_the_open_health_routes_answers_401_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    svc = _service()
    caplog.set_level(logging.DEBUG)
    for method, path in _every_route(svc):
        if path in ("/v2/health/live", "/v2/health/ready"):
            assert _call(svc, method, path, {}).status != 401
            continue
        for headers in ({}, {"authorization": "Bearer nope"}):
            reply = _call(svc, method, path, headers)
            assert reply.status == 401, (method, path)
            assert set(json.loads(reply.body)) == {"error"}
            assert reply.headers["www-authenticate"].startswith('Bearer realm="cascade"')
        assert _call(svc, "GET", path, bearer_header(TOKEN)).status != 401
    assert TOKEN not in caplog.text


def test_closed_health_routes_ask_for_the_token_too() -> None:
    svc = _service(open_health=False)
    assert _call(svc, "GET", "/v2/health/live", {}).status == 401
    assert _call(svc, "GET", "/v2/health/ready/", {}).status == 401
    assert _call(svc, "GET", "/v2/health/live", bearer_header(TOKEN)).status == 200


def test_the_openapi_document_declares_the_scheme_with_a_token_and_only_then() -> None:
    assert (
        "securitySchemes"
        not in json.loads(_call(InferenceService(), "GET", "/openapi.json", {}).body)["components"]
    )
    document = json.loads(_call(_service(), "GET", "/openapi.json", bearer_header(TOKEN)).body)
    validate(document)  # still a valid OpenAPI 3.1 document
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <token>; the token the server was given",
    }
    assert document["security"] == [{"bearerAuth": []}]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/v2/health/"):
                assert operation["security"] == [] and "401" not in operation["responses"]
            else:
                assert operation["security"] == [{"bearerAuth": []}]
                assert "401" in operation["responses"]
