"""Probe schedules: tiny functions ``step -> bool`` (steps count updates from 1), picklable (so a
callback holding one crosses to spawned processes, e.g. Lightning's ``ddp_spawn``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Schedule = Callable[[int], bool]


@dataclass(frozen=True)
class Every:
    n: int
    first: bool = True

    def __call__(self, step: int) -> bool:
        return step % self.n == 0 or (self.first and step == 1)


@dataclass(frozen=True)
class Steps:
    chosen: frozenset

    def __call__(self, step: int) -> bool:
        return step in self.chosen


@dataclass(frozen=True)
class Union:
    parts: tuple

    def __call__(self, step: int) -> bool:
        return any(p(step) for p in self.parts)


def every(n: int, first: bool = True) -> Schedule:
    """Every ``n`` steps (and at step 1 if ``first``)."""
    return Every(n, first)


def explicit(steps: Iterable[int]) -> Schedule:
    return Steps(frozenset(int(s) for s in steps))


def log_spaced_steps(total: int, points: int) -> list[int]:
    """About ``points`` steps spaced evenly in log(step) over [1, total] (duplicates merged)."""
    return np.unique(np.round(np.geomspace(1, total, points)).astype(int)).tolist()


def log_spaced(total: int, points: int) -> Schedule:
    """About ``points`` steps spaced evenly in log(step) over [1, total]: dense early, when the
    landscape changes fastest (the paper's largest BN effects are early in training)."""
    return explicit(log_spaced_steps(total, points))


def mixed(total: int, points: int, n: int) -> Schedule:
    """Early training densely and the rest evenly: the union of :func:`log_spaced` (``points``
    steps) and :func:`every` (``n``). Either part alone misses something: every-N steps miss
    the first N steps, where the paper's largest effects are; log-spaced steps leave the end of
    training almost unsampled. Each part is a subset of the records, so a claim can be judged
    on either (see ``landscape.claims.on_schedule``)."""
    return Union((explicit(log_spaced_steps(total, points)), every(n)))


SCHEDULES = ("every", "log", "list", "mixed")  # probes.schedule


def build(kind: str, total: int, n: int, points: int, steps: Iterable[int] = ()) -> Schedule:
    """The schedule a run's ``probes`` settings name (flat arguments, not a config)."""
    if kind == "every":
        return every(n)
    if kind == "log":
        return log_spaced(total, points)
    if kind == "list":
        return explicit(steps)
    if kind == "mixed":
        return mixed(total, points, n)
    raise ValueError(f"unknown schedule '{kind}'; choose from {SCHEDULES}")
