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


def log_spaced(total: int, points: int) -> Schedule:
    """About ``points`` steps spaced evenly in log(step) over [1, total]: dense early, when the
    landscape changes fastest (the paper's largest BN effects are early in training)."""
    return explicit(np.unique(np.round(np.geomspace(1, total, points)).astype(int)).tolist())
