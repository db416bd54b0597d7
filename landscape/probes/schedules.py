"""Probe schedules: tiny functions ``step -> bool`` (steps count updates from 1)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

Schedule = Callable[[int], bool]


def every(n: int, first: bool = True) -> Schedule:
    """Every ``n`` steps (and at step 1 if ``first``)."""
    return lambda step: step % n == 0 or (first and step == 1)


def explicit(steps: Iterable[int]) -> Schedule:
    chosen = frozenset(int(s) for s in steps)
    return lambda step: step in chosen


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
    log_steps, regular = frozenset(log_spaced_steps(total, points)), every(n)
    return lambda step: step in log_steps or regular(step)


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
