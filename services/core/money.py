"""Money as text: exact decimals, never floats (docs/architecture.md §2.5)."""

from __future__ import annotations

from decimal import Decimal


def decimal_str(value: Decimal) -> str:
    """An exact decimal as a plain string without exponent or trailing zeros: 0.00015, 2.5, 1000."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
