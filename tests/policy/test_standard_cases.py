"""The committed policy cases match what the real normaliser and the PS3.15 table produce today."""

from __future__ import annotations

from collections import defaultdict

from tests.policy.generate_cases import FIXTURE, SPELLINGS, cases, render


def test_committed_cases_are_fresh() -> None:
    assert FIXTURE.read_text() == render(cases()), (
        "tests/policy/standard_cases.json is stale: run `python -m tests.policy.generate_cases`"
    )


def test_every_spelling_gives_the_same_policy_input() -> None:
    inputs: dict[str, list[object]] = defaultdict(list)
    for name, case in cases().items():
        unspelled = name
        for spelling in SPELLINGS:
            unspelled = unspelled.replace(f"-{spelling}-", "-*-")
        inputs[unspelled].append(case["input"])
    assert all(len(found) == len(SPELLINGS) for found in inputs.values())
    assert all(found[0] == found[1] == found[2] for found in inputs.values())
