"""OAuth 2.0 wire rules (services/auth/oauth_protocol.py), checked against Authlib where it has the
same rule: PKCE S256, form bodies, client authentication, redirect URIs, scopes and RFC 6749 errors."""

from __future__ import annotations

import base64
from urllib.parse import quote

import orjson
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from services.auth.oauth_protocol import (
    FORM_TYPE,
    OAuthError,
    client_credentials,
    parse_form,
    parse_scope,
    pkce_matches,
    valid_challenge,
    validate_redirect_uris,
    with_query,
)
from services.core.errors import ERROR_JSON_KEY, HTTP_STATUS_KEY, GatewayError


@pytest.mark.parametrize("length", [43, 64, 128])
def test_pkce_agrees_with_authlib(length: int) -> None:
    verifier = generate_token(length)
    challenge = create_s256_code_challenge(verifier)
    assert valid_challenge(challenge)
    assert pkce_matches(verifier, challenge)
    assert not pkce_matches(generate_token(length), challenge)


def test_pkce_refuses_verifiers_outside_rfc_7636() -> None:
    for verifier in ("short", "x" * 129, "a" * 42 + " ", "ä" * 43):
        assert not pkce_matches(verifier, create_s256_code_challenge("a" * 43))
    assert not valid_challenge("a" * 42) and not valid_challenge("a" * 43 + "=")


def test_forms_decode_plus_and_percent_and_refuse_repeats_and_other_types() -> None:
    assert parse_form(FORM_TYPE + "; charset=UTF-8", b"scope=inference+read%3Amodels&state=") == {
        "scope": "inference read:models", "state": ""}
    with pytest.raises(OAuthError) as repeated:
        parse_form(FORM_TYPE, b"code=a&code=b")
    assert repeated.value.error == "invalid_request"
    for content_type in ("application/json", "", "multipart/form-data"):
        with pytest.raises(OAuthError):
            parse_form(content_type, b"grant_type=client_credentials")
    with pytest.raises(OAuthError):
        parse_form(FORM_TYPE, b"x=" + b"a" * 20_000)


def basic(client_id: str, secret: str) -> str:
    """As RFC 6749 §2.3.1 (and Authlib) send it: each part form-encoded, then base64."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def test_client_authentication_by_basic_or_by_form_never_both() -> None:
    found = client_credentials(basic("id-1", "s:e/c r+t"), {})
    assert (found.client_id, found.secret, found.basic) == ("id-1", "s:e/c r+t", True)
    found = client_credentials(None, {"client_id": "id-2", "client_secret": "x"})
    assert (found.client_id, found.secret, found.basic) == ("id-2", "x", False)
    public = client_credentials(None, {"client_id": "id-3"})
    assert public.secret is None
    with pytest.raises(OAuthError) as both:
        client_credentials(basic("id-1", "s"), {"client_secret": "s"})
    assert both.value.error == "invalid_request"
    with pytest.raises(OAuthError) as nobody:
        client_credentials(None, {})
    assert nobody.value.error == "invalid_client" and nobody.value.http_status == 401
    with pytest.raises(OAuthError) as garbled:
        client_credentials("Basic %%%", {})
    metadata = dict(garbled.value.trailing_metadata())
    assert metadata["www-authenticate"].startswith("Basic") and metadata[HTTP_STATUS_KEY] == "401"


def test_errors_are_rfc_6749_json() -> None:
    error = OAuthError("invalid_grant", "The authorization code has expired.")
    assert error.http_status == 400
    body = orjson.loads(dict(error.trailing_metadata())[ERROR_JSON_KEY])
    assert body == {"error": "invalid_grant", "error_description": "The authorization code has expired."}


def test_redirect_uris_are_absolute_exact_and_https_outside_loopback() -> None:
    good = ["https://app.example/cb", "http://127.0.0.1:8765/callback", "http://localhost/cb",
            "http://[::1]:9/cb", "com.example.notes:/oauth"]
    assert validate_redirect_uris(good + good[:1]) == tuple(good)
    for bad in (["http://app.example/cb"], ["https://app.example/cb#frag"], ["/relative"], ["https:///nohost"],
                ["https://app.example/a b"], [], ["https://x.example/"] * 11):
        with pytest.raises(GatewayError) as caught:
            validate_redirect_uris(bad)
        assert caught.value.param == "redirect_uris", bad


def test_with_query_keeps_the_uris_own_query_and_drops_empty_values() -> None:
    assert with_query("https://a.example/cb", {"code": "c 1", "state": ""}) == "https://a.example/cb?code=c%201"
    assert with_query("https://a.example/cb?x=1", {"code": "c"}) == "https://a.example/cb?x=1&code=c"


def test_scopes_are_permission_names() -> None:
    assert parse_scope("inference  read:models inference") == ("inference", "read:models")
    assert parse_scope(" ") is None
    with pytest.raises(OAuthError) as caught:
        parse_scope("inference openid")
    assert caught.value.error == "invalid_scope"
