"""What each organization decided for all its requests, answered from memory on the request path:
whether the request log keeps its bodies (`store_prompts`, docs/ledger.md §2) and its default
provider preferences (`provider`, docs/routing.md §2). Kept current over NATS subject
`tenancy.organizations.changed` (services/limits/org_book.py): a change applies everywhere within
2 s; a request of an organization that set neither pays one dictionary lookup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.limits.org_book import OrganizationBook, publish_change

SUBJECT = "tenancy.organizations.changed"


@dataclass(frozen=True, slots=True)
class OrganizationSettings:
    """An organization's settings that its requests follow."""

    store_prompts: bool = False
    provider: dict[str, Any] | None = None  # default provider preferences; None: none


NONE = OrganizationSettings()


async def _load(pool: Any, organization_id: str) -> OrganizationSettings:
    row = await pool.fetchrow("SELECT store_prompts, provider_policy FROM organizations WHERE id = $1::uuid",
                              organization_id)
    if row is None or (not row["store_prompts"] and not row["provider_policy"]):
        return NONE
    return OrganizationSettings(bool(row["store_prompts"]), row["provider_policy"] or None)


class OrganizationSettingsBook(OrganizationBook[OrganizationSettings]):
    """Per process: each organization's settings (services/limits/org_book.py)."""

    def __init__(self, pool: Any, *, ttl_s: float = 30.0) -> None:
        super().__init__(lambda organization_id: _load(pool, organization_id), SUBJECT, ttl_s=ttl_s)


async def announce_change(nc: Any | None) -> bool:
    """Tells every process that an organization's settings changed (they read them again)."""
    return await publish_change(nc, SUBJECT)
