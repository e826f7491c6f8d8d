"""OAuth 2.0 wire rules, without storage (docs/reference.md §4 "OAuth 2.0"): RFC 6749 errors,
form bodies, client authentication, redirect URIs, scopes and PKCE (RFC 7636, S256 only).

Everything here is a pure function of its inputs, so oauth.py reads as the flows themselves.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from services.auth.permissions import INFERENCE, PERMISSIONS, READ_MODELS
from services.core.errors import GatewayError, Reason
from services.core.errors import quote as quoted

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_STATE_LENGTH = 1000
MAX_NAME_LENGTH = 200
DEFAULT_SCOPES: tuple[str, ...] = (INFERENCE, READ_MODELS)
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 §4.1
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # BASE64URL of a SHA-256, no padding
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})

# RFC 6749 §5.2 error codes, and the status each answers with.
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
UNAUTHORIZED_CLIENT = "unauthorized_client"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
INVALID_SCOPE = "invalid_scope"
ACCESS_DENIED = "access_denied"
UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"
UNSUPPORTED_TOKEN_TYPE = "unsupported_token_type"


class OAuthError(GatewayError):
    """An error of the OAuth endpoints, shown as RFC 6749 §5.2 JSON (`{"error",
    "error_description"}`) rather than OpenAI's shape: OAuth client libraries parse that. It travels
    like every GatewayError (the Lua shaper writes the JSON it carries), with a
    `WWW-Authenticate` challenge when a client failed HTTP Basic authentication (§5.2)."""

    def __init__(self, error: str, description: str, *, basic_challenge: bool = False) -> None:
        reason = Reason.INVALID_CREDENTIALS if error == INVALID_CLIENT else Reason.INVALID_REQUEST
        super().__init__(reason, description, code=error)
        self.error = error
        self.basic_challenge = basic_challenge

    def to_openai(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.message}

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        metadata = super().trailing_metadata()
        if self.basic_challenge:
            metadata += (("www-authenticate", 'Basic realm="aggregator"'),)
        return metadata


# -- forms -------------------------------------------------------------------------------------

def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """The parameters of an `application/x-www-form-urlencoded` body; a parameter sent twice, a
    body of another type or an oversized one is invalid_request (RFC 6749 §3.2)."""
    if content_type.split(";", 1)[0].strip().lower() != FORM_TYPE:
        raise OAuthError(INVALID_REQUEST, f"The body must be {FORM_TYPE}.")
    if len(body) > MAX_FORM_BYTES:
        raise OAuthError(INVALID_REQUEST, "The body is too large.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError(INVALID_REQUEST, "The body is not a valid form.") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError(INVALID_REQUEST, f"Parameter {quoted(name)} is repeated.")
        form[name] = value
    return form


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """Who a token request says it is: `secret` is None for a public client."""

    client_id: str
    secret: str | None
    basic: bool  # sent with HTTP Basic (a failure then answers with a challenge)


def client_credentials(authorization: str | None, form: dict[str, str]) -> ClientCredentials:
    """The client of a token or revocation request: HTTP Basic (RFC 6749 §2.3.1, both parts
    form-encoded), or `client_id` (+ `client_secret`) in the body; never both."""
    if authorization and authorization[:6].lower() == "basic ":
        if "client_secret" in form:
            raise OAuthError(INVALID_REQUEST, "Authenticate the client one way only.")
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(INVALID_CLIENT, "Malformed Basic credentials.", basic_challenge=True) from None
        name, colon, secret = decoded.partition(":")
        client_id = unquote(name.replace("+", " "))
        if not colon or (form.get("client_id") not in (None, client_id)):
            raise OAuthError(INVALID_CLIENT, "Malformed Basic credentials.", basic_challenge=True)
        return ClientCredentials(client_id, unquote(secret.replace("+", " ")), basic=True)
    client_id = form.get("client_id", "")
    if not client_id:
        raise OAuthError(INVALID_CLIENT, "Client authentication failed: no client_id.")
    return ClientCredentials(client_id, form.get("client_secret"), basic=False)


def token_json(values: dict[str, Any]) -> dict[str, Any]:
    """A successful token response body (RFC 6749 §5.1)."""
    return {"token_type": "bearer", **values}


NO_STORE = (("cache-control", "no-store"), ("pragma", "no-cache"))


# -- redirect URIs -----------------------------------------------------------------------------

def validate_redirect_uris(uris: list[str]) -> tuple[str, ...]:
    """Absolute URIs without a fragment (RFC 6749 §3.1.2), https or http on a loopback host (a
    native app's local listener, RFC 8252 §7.3), or a private-use scheme (`com.example.app:`)."""
    if not 0 < len(uris) <= MAX_REDIRECT_URIS:
        raise _bad_field(f"redirect_uris must list 1 to {MAX_REDIRECT_URIS} URIs.", "redirect_uris")
    for uri in uris:
        parts = urlsplit(uri) if len(uri) <= MAX_URI_LENGTH else None
        if parts is None or not parts.scheme or parts.fragment or "#" in uri or any(c.isspace() for c in uri):
            raise _bad_field(f"Redirect URI {quoted(uri)} must be absolute, without a fragment.",
                             "redirect_uris")
        if parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK:
            raise _bad_field(f"Redirect URI {quoted(uri)}: plain http is allowed for localhost only.",
                             "redirect_uris")
        if parts.scheme in ("http", "https") and not parts.hostname:
            raise _bad_field(f"Redirect URI {quoted(uri)} has no host.", "redirect_uris")
    return tuple(dict.fromkeys(uris))


def with_query(uri: str, params: dict[str, str]) -> str:
    """`uri` with `params` added to its query (RFC 6749 §4.1.2), keeping the query it has."""
    present = {k: v for k, v in params.items() if v}
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(present, quote_via=quote)


def _bad_field(message: str, param: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, param=param)


def validate_client_name(name: str) -> str:
    name = name.strip()
    if not 0 < len(name) <= MAX_NAME_LENGTH:
        raise _bad_field(f"name must be 1 to {MAX_NAME_LENGTH} characters.", "name")
    return name


# -- scopes ------------------------------------------------------------------------------------

def parse_scope(scope: str) -> tuple[str, ...] | None:
    """The permission names of a space-separated `scope` (RFC 6749 §3.3), in order, without
    duplicates; None when empty. An unknown name is invalid_scope."""
    names = tuple(dict.fromkeys(scope.split()))
    if not names:
        return None
    unknown = next((n for n in names if n not in PERMISSIONS), None)
    if unknown is not None:
        raise OAuthError(INVALID_SCOPE, f"Unknown scope {quoted(unknown)}; scopes are permission names: "
                                        f"{' '.join(PERMISSIONS)}.")
    return names


def scope_string(scopes: tuple[str, ...] | list[str]) -> str:
    return " ".join(scopes)


# -- PKCE --------------------------------------------------------------------------------------

def valid_challenge(challenge: str) -> bool:
    return _CHALLENGE.fullmatch(challenge) is not None


def pkce_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6, S256: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge."""
    if _VERIFIER.fullmatch(verifier) is None:
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return hmac.compare_digest(computed, challenge)
