"""The state table for asynchronous work: which status each job moves through, and when it moves.

Like moto's managed state, a transition fires immediately, after N observations (polls) of the
resource, after T seconds, or never (a stalled job). Nothing runs in the background: every
backend call first advances due jobs, so a poller sees the same history whatever its timing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Trigger(StrEnum):
    IMMEDIATE = "immediate"
    POLLS = "polls"
    SECONDS = "seconds"
    NEVER = "never"


@dataclass(frozen=True)
class Progression:
    """When an asynchronous change completes."""

    trigger: Trigger = Trigger.SECONDS
    """immediate | polls (after `value` observations) | seconds (after `value` s) | never."""
    value: float = 0.5
    """Number of polls or seconds, depending on the trigger."""

    def due(self, elapsed: float, polls: int) -> bool:
        if self.trigger is Trigger.IMMEDIATE:
            return True
        if self.trigger is Trigger.POLLS:
            return polls >= self.value
        if self.trigger is Trigger.SECONDS:
            return elapsed >= self.value
        return False

    def completes_at(self, started_at: float, now: float) -> float:
        """The completion time reported to clients (seconds-based jobs finish on schedule)."""
        return started_at + self.value if self.trigger is Trigger.SECONDS else now


# In-progress workflow status → (status on success, status on failure), as HealthImaging names them.
TRANSITIONS: dict[str, tuple[str, str]] = {
    "UPDATING": ("UPDATED", "UPDATE_FAILED"),
    "UPDATING_FOR_STUDY_CONSISTENCY": ("UPDATED", "UPDATE_FAILED"),
    "COPYING": ("COPIED", "COPY_FAILED"),
    "COPYING_WITH_READ_ONLY_ACCESS": ("COPIED", "COPY_FAILED"),
    "DELETING": ("DELETED", "DELETED"),
    "IMPORTING": ("IMPORTED", "IMPORT_FAILED"),
    # DICOM import jobs and data stores have their own status enums.
    "SUBMITTED": ("COMPLETED", "FAILED"),
    "IN_PROGRESS": ("COMPLETED", "FAILED"),
    "CREATING": ("ACTIVE", "CREATE_FAILED"),
    "DELETING_DATASTORE": ("DELETED", "DELETED"),
}

Finisher = Callable[[float], None]
"""Completes a job; gets the completion timestamp."""


@dataclass
class Job:
    """One piece of asynchronous work on the resources named by `keys`."""

    keys: tuple[str, ...]
    progression: Progression
    started_at: float
    finish: Finisher
    polls: int = 0


@dataclass
class JobTable:
    """Pending jobs, advanced lazily on every backend call."""

    jobs: list[Job] = field(default_factory=list)

    def add(self, job: Job) -> None:
        self.jobs.append(job)

    def observe(self, key: str) -> None:
        """A client looked at `key` (counts towards polls-triggered transitions)."""
        for job in self.jobs:
            if key in job.keys:
                job.polls += 1

    def advance(self, now: float) -> None:
        """Finish every due job, oldest first."""
        due = [j for j in self.jobs if j.progression.due(now - j.started_at, j.polls)]
        self.jobs = [j for j in self.jobs if j not in due]
        for job in due:
            job.finish(job.progression.completes_at(job.started_at, now))

    def pending(self, key: str) -> bool:
        return any(key in job.keys for job in self.jobs)

    def release_stalled(self, now: float) -> int:
        """Finish jobs that would never finish (admin action); returns how many."""
        stalled = [j for j in self.jobs if j.progression.trigger is Trigger.NEVER]
        self.jobs = [j for j in self.jobs if j not in stalled]
        for job in stalled:
            job.finish(now)
        return len(stalled)
