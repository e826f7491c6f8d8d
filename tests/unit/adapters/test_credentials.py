"""Credential resolution from the environment."""

from __future__ import annotations

import pytest

from aggregator.routing.v1 import route_pb2
from services.adapters.credentials import BEARER, AuthScheme, CredentialResolver
from services.core.errors import GatewayError, Reason


def endpoint(env: str) -> route_pb2.Endpoint:
    return route_pb2.Endpoint(provider="acme", kind="openai", base_url="http://x/v1", api_key_env=env)


def test_bearer_header_from_the_environment() -> None:
    resolver = CredentialResolver({"ACME_KEY": "sk-secret"})
    assert resolver.auth_headers(endpoint("ACME_KEY"), BEARER, key_required=True) == {
        "Authorization": "Bearer sk-secret"}


def test_other_schemes() -> None:
    resolver = CredentialResolver({"ACME_KEY": "k"})
    assert resolver.auth_headers(endpoint("ACME_KEY"), AuthScheme("x-api-key"), key_required=True) == {
        "x-api-key": "k"}


def test_keyless_endpoint_sends_no_header() -> None:
    assert CredentialResolver({}).auth_headers(endpoint(""), BEARER, key_required=False) == {}


@pytest.mark.parametrize("environ", [{}, {"ACME_KEY": ""}])
def test_missing_variable_names_it_and_no_value(environ: dict[str, str]) -> None:
    with pytest.raises(GatewayError) as info:
        CredentialResolver(environ | {"OTHER": "sk-other-secret"}).auth_headers(
            endpoint("ACME_KEY"), BEARER, key_required=False)
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED
    assert "ACME_KEY" in info.value.message and "sk-" not in info.value.message


def test_provider_that_needs_a_key_without_api_key_env() -> None:
    with pytest.raises(GatewayError) as info:
        CredentialResolver({}).auth_headers(endpoint(""), BEARER, key_required=True)
    assert info.value.reason is Reason.UPSTREAM_AUTH_FAILED and "acme" in info.value.message


def test_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_TEST_KEY_FROM_ENV", "sk-env")
    headers = CredentialResolver().auth_headers(endpoint("ACME_TEST_KEY_FROM_ENV"), BEARER, key_required=True)
    assert headers == {"Authorization": "Bearer sk-env"}


def test_only_configured_key_variables_are_read() -> None:
    environ = {"OPENAI_API_KEY": "sk-configured", "DATABASE_URL": "postgresql://secret@db/x"}
    resolver = CredentialResolver(environ, allowed_names=frozenset({"OPENAI_API_KEY"}))
    allowed = route_pb2.Endpoint(provider="openai", api_key_env="OPENAI_API_KEY")
    assert resolver.auth_headers(allowed, BEARER, key_required=True) == {
        "Authorization": "Bearer sk-configured"}
    forged = route_pb2.Endpoint(provider="evil", api_key_env="DATABASE_URL")
    with pytest.raises(GatewayError) as caught:
        resolver.auth_headers(forged, BEARER, key_required=True)
    assert caught.value.reason is Reason.UPSTREAM_AUTH_FAILED
    assert "secret" not in caught.value.message and "DATABASE_URL" not in caught.value.message
