"""Renders docs/providers/conformance.md, the one table of provider kind × conformance case, from
what the profiles declare (`ProviderProfile.cannot`, `streams_tool_arguments`, `error_outcomes`).

    .venv/bin/python -m tests.conformance.table --write    # regenerate the page
    .venv/bin/python -m tests.conformance.table            # print it

`test_conformance_table.py` fails when the committed page differs from this rendering.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from tests.conformance.cases import CASES, ERROR_CASES, STREAM_ERROR_CASES
from tests.conformance.providers import PROFILES, ProviderProfile

PAGE = Path(__file__).resolve().parents[2] / "docs" / "providers" / "conformance.md"

INTRO = """\
# Conformance: provider kind × case

One suite (`tests/conformance/`) runs every case over every provider kind's adapter, in-process
and over gRPC, against a fake upstream speaking that provider's real wire format. A cell is
**yes** when the case runs and passes for that kind, or says why the provider cannot do it: a
case is never skipped silently. Cases a kind declares out that have a testable consequence are
proven too (a refusal with `unsupported_parameter` before anything is sent, or the error the
nearest failure gives instead; see "Declared differences").

This page is generated from the profiles (`tests/conformance/providers.py`,
`tests/conformance/profile_<kind>.py`) by `.venv/bin/python -m tests.conformance.table --write`;
`tests/conformance/test_conformance_table.py` fails when it differs from what they declare.
"""


DIFFERENCES = """\
## Declared differences

Where a provider's behaviour differs from OpenAI's but the case still holds, its profile declares
what the case checks instead ("expects"). For an error class whose case a kind declares out,
"instead" is what the nearest failure that provider does send gives (tested as well).
"""


def _declared(profile: ProviderProfile) -> tuple[Any, ...]:
    return (dict(profile.cannot), profile.streams_tool_arguments, dict(profile.error_outcomes),
            dict(profile.notes))


def by_kind(profiles: Sequence[ProviderProfile] = PROFILES) -> dict[str, ProviderProfile]:
    """One profile per kind; the profiles of one kind (keyed, keyless) must declare the same."""
    kinds: dict[str, ProviderProfile] = {}
    for profile in profiles:
        first = kinds.setdefault(profile.kind, profile)
        if _declared(profile) != _declared(first):
            raise ValueError(f"profiles {first.id} and {profile.id} of kind {profile.kind} "
                             "declare differently")
    return kinds


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(kinds: Mapping[str, ProviderProfile]) -> list[str]:
    lines = [_row(["case", "what it proves", *kinds]), _row(["---"] * (2 + len(kinds)))]
    for case, proves in CASES.items():
        lines.append(_row([f"`{case}`", proves, *(p.cannot.get(case, "yes") for p in kinds.values())]))
    counts = [f"**{len(p.supports)}/{len(CASES)}**" for p in kinds.values()]
    lines.append(_row(["**yes**", "", *counts]))
    return lines


def _expectation(key: str, value: Any) -> str:
    if key == "message":
        return "the provider's own message"
    shown = value.name if isinstance(value, Enum) else repr(value)
    return f"{key} `{shown}`"


def _differences(profile: ProviderProfile) -> list[str]:
    lines = [f"- `{case}`: {note}" for case, note in profile.notes.items()]
    if not profile.streams_tool_arguments:
        lines.append("- `tool_call_stream`: a streamed tool call arrives whole, in one delta with the "
                     "complete arguments (not in fragments)")
    for name, outcome in profile.error_outcomes.items():
        error_case = ERROR_CASES.get(name) or STREAM_ERROR_CASES[name]
        expect = ", ".join(_expectation(k, v) for k, v in error_case.expected(outcome.expect).items())
        kind = "instead" if error_case.case in profile.cannot else "expects"
        lines.append(f"- `{error_case.case}` (`{name}`): {outcome.why}; {kind}: {expect}")
    return lines


def render(profiles: Sequence[ProviderProfile] = PROFILES) -> str:
    """The whole page."""
    kinds = by_kind(profiles)
    lines = [INTRO, *_table(kinds), "", DIFFERENCES]
    for kind, profile in kinds.items():
        differences = _differences(profile)
        lines += [f"### {kind}", "", *(differences or ["None: every case holds as written."]), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {PAGE}")
    args = parser.parse_args(argv)
    if args.write:
        PAGE.write_text(render(), encoding="utf-8")
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
