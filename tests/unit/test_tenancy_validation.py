"""Validation of organization and user input (services/auth/tenancy.py): pure, no I/O."""

from __future__ import annotations

import pytest

from services.auth import tenancy
from services.core.errors import GatewayError, Reason


def refused(call: object, *args: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.reason is Reason.INVALID_REQUEST
    return caught.value


def test_emails_are_trimmed_and_lower_cased() -> None:
    assert tenancy.email_address("  Ada.Lovelace@Example.COM ") == "ada.lovelace@example.com"


@pytest.mark.parametrize("bad", ["", "ada", "@example.com", "ada@", "a b@example.com", "a@b@c",
                                 "x" * 320 + "@example.com"])
def test_bad_emails_are_refused_naming_the_field(bad: str) -> None:
    assert refused(tenancy.email_address, bad).param == "email"


def test_passwords_have_8_to_1024_characters() -> None:
    assert tenancy.password("12345678") == "12345678"
    assert refused(tenancy.password, "1234567").param == "password"
    assert refused(tenancy.password, "x" * 1025).param == "password"


def test_roles_default_to_member() -> None:
    assert tenancy.user_role("") == "member" and tenancy.user_role("admin") == "admin"
    assert refused(tenancy.user_role, "owner").param == "role"


def test_organization_names_are_trimmed_and_bounded() -> None:
    assert tenancy.organization_name("  acme ") == "acme"
    assert refused(tenancy.organization_name, "   ").param == "name"
    assert refused(tenancy.organization_name, "x" * 201).param == "name"


def test_pages() -> None:
    assert tenancy.page_limit(0) == tenancy.DEFAULT_LIMIT and tenancy.page_limit(100) == 100
    assert refused(tenancy.page_limit, 101).param == "limit"
    assert refused(tenancy.page_limit, -1).param == "limit"
    assert tenancy.page_after("") is None
    ident = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert tenancy.page_after(ident.upper()) == ident
    assert refused(tenancy.page_after, "not-an-id").param == "after"
