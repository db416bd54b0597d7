"""Aggregation across seeds: mean and a 95% confidence interval (Student t, scipy), and verdicts."""

from __future__ import annotations

import math

from landscape.results import finite


def mean_ci(values, confidence: float = 0.95) -> dict:
    """``{"mean", "ci": [low, high] or None, "n", "values"}`` over the finite values.

    The interval is ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)`` with the sample standard
    deviation ``s``; it needs two values or more."""
    from scipy import stats

    vals = finite(values)
    n = len(vals)
    if n == 0:
        return {"mean": None, "ci": None, "n": 0, "values": []}
    mean = sum(vals) / n
    if n < 2:
        return {"mean": mean, "ci": None, "n": n, "values": vals}
    sem = stats.sem(vals)
    if sem == 0:
        return {"mean": mean, "ci": [mean, mean], "n": n, "values": vals}
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return {"mean": mean, "ci": [float(low), float(high)], "n": n, "values": vals}


def verdict(agg: dict, threshold: float, above: bool = True) -> str:
    """``reproduced`` when the quantity is beyond ``threshold`` in the claimed direction (with
    several seeds: its whole 95% interval), ``not reproduced`` when it is on the other side
    (whole interval), ``inconclusive`` otherwise or without data."""
    if agg.get("mean") is None or (isinstance(agg["mean"], float) and math.isnan(agg["mean"])):
        return "inconclusive"
    low, high = agg["ci"] if agg.get("ci") else (agg["mean"], agg["mean"])
    if not above:
        low, high, threshold = -high, -low, -threshold
    if low > threshold:
        return "reproduced"
    if high <= threshold:
        return "not reproduced"
    return "inconclusive"
