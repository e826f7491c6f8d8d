"""The one table never lies: docs/providers/conformance.md is what the profiles declare, every case
in it has tests, and every declaration names something real."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.conformance
from tests.conformance import table
from tests.conformance.cases import CASES, ERROR_CASES, STREAM_ERROR_CASES
from tests.conformance.providers import PROFILES, ProviderProfile


def _conformance(marks: Any) -> list[pytest.Mark]:
    """The conformance marks of a `pytestmark` (one decorator or a list of marks)."""
    listed = marks if isinstance(marks, list) else [marks]
    found = [m.mark if isinstance(m, pytest.MarkDecorator) else m for m in listed]
    return [m for m in found if isinstance(m, pytest.Mark) and m.name == "conformance"]


def conformance_marks() -> Iterator[tuple[str, pytest.Mark]]:
    """(test name, its closest `conformance` mark) for every test function of the suite."""
    for info in pkgutil.iter_modules(tests.conformance.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"tests.conformance.{info.name}")
        module_marks = _conformance(getattr(module, "pytestmark", []))
        for name, function in vars(module).items():
            if name.startswith("test_") and callable(function):
                for mark in _conformance(getattr(function, "pytestmark", []))[:1] or module_marks[:1]:
                    yield f"{info.name}::{name}", mark


def cases_of(mark: pytest.Mark) -> set[str]:
    each = mark.kwargs.get("each")
    return {variant.case for variant in each.values()} if each is not None else {mark.args[0]}


def test_the_committed_table_is_what_the_profiles_declare() -> None:
    committed = table.PAGE.read_text(encoding="utf-8")
    assert committed == table.render(), (
        f"{table.PAGE} is stale: run `.venv/bin/python -m tests.conformance.table --write`")


def test_every_case_has_tests_that_run_it_and_no_test_names_an_unknown_case() -> None:
    run = set()
    for test, mark in conformance_marks():
        assert cases_of(mark) <= set(CASES), test
        if not mark.kwargs.get("declared_out"):
            run |= cases_of(mark)
    assert run == set(CASES)


def test_every_case_runs_for_some_provider() -> None:
    assert {case for profile in PROFILES for case in profile.supports} == set(CASES)


def test_profiles_of_one_kind_declare_the_same() -> None:
    kinds = table.by_kind()
    assert set(kinds) == {profile.kind for profile in PROFILES}


@pytest.mark.parametrize("profile_", PROFILES, ids=[p.id for p in PROFILES])
def test_every_error_class_a_profile_runs_has_its_failure_preset(profile_: ProviderProfile) -> None:
    for name, error_case in {**ERROR_CASES, **STREAM_ERROR_CASES}.items():
        if error_case.case in profile_.supports or name in profile_.error_outcomes:
            assert callable(getattr(profile_.failures, error_case.preset, None)), name


def test_the_provider_pages_link_the_table() -> None:
    pages = Path(table.PAGE).parent
    for kind in ("openai", "anthropic", "google", "cohere"):
        assert "(conformance.md)" in (pages / f"{kind}.md").read_text(encoding="utf-8"), kind
