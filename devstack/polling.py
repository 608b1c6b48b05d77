"""Local stack: waiting for eventual state by polling (no sleeps standing in for a condition)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def passed(result: object) -> bool:
    """The default condition: `check` returned without raising AssertionError."""
    return True


def not_none(result: object) -> bool:
    """For checks that answer None until their condition holds."""
    return result is not None


async def eventually(
    check: Callable[[], Awaitable[T]],
    within: float = 30.0,
    until: Callable[[T], bool] = passed,
    interval: float = 0.05,
) -> T:
    """Await `check` until it stops raising AssertionError and `until` accepts its result.

    After `within` seconds the last AssertionError is raised (or one saying the condition was
    not met), so a failure names what was still wrong.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            result = await check()
            if until(result):
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:g} s")
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    within: float = 10.0,
    until: Callable[[T], bool] = passed,
    interval: float = 0.02,
) -> T:
    """`eventually` for blocking checks (sync clients such as boto3)."""
    deadline = time.monotonic() + within
    while True:
        try:
            result = check()
            if until(result):
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within:g} s")
        time.sleep(interval)
