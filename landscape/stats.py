"""Statistics over seeds: means and intervals (Student t, scipy), and the one-sided test
behind every claim's verdict.

Every claim is directional ("BN's loss band is narrower": standard / BN above 1), so it is
tested one-sided. For each seed, the claim's quantity is moved to the test's scale
(``transform``: ``log`` for ratios, so 2x and 0.5x are equally far from 1) and measured
from the threshold in the claimed direction, ``d_s``. Then:

- ``reproduced``: a one-sided Student t test rejects "mean d <= 0" at ``alpha`` (0.05): the
  one-sided 95% bound lies beyond the threshold;
- ``not reproduced``: the opposite one-sided test rejects "mean d >= 0": the data are
  beyond the threshold on the wrong side;
- ``inconclusive``: neither, with the reason (too few seeds for the observed spread, or an
  effect near the threshold) and the number of seeds this spread would need.

With one seed no test is possible: the verdict follows the sign of ``d`` and is marked
indicative. Beside the test: the sign count (k of n seeds on the claimed side) and the
effect size ``d_z = mean(d) / sd(d)`` with the 95% interval of ``mean(d)``.
"""

from __future__ import annotations

import math

from landscape.results import finite

ALPHA = 0.05  # one-sided level of every claim's test
POWER = 0.8  # the power the seed estimate aims for
MAX_SEEDS_ESTIMATE = 1000


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


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The smallest number of seeds for which a one-sided t test at ``alpha`` detects a mean
    ``effect`` (either sign) with standard deviation ``sd`` with probability ``power``
    (noncentral t); None if no effect or more than MAX_SEEDS_ESTIMATE seeds."""
    from scipy import stats

    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return None
    if sd == 0:
        return 2
    dz = abs(effect) / sd
    for n in range(2, MAX_SEEDS_ESTIMATE + 1):
        crit = stats.t.ppf(1 - alpha, n - 1)
        if stats.nct.sf(crit, n - 1, dz * math.sqrt(n)) >= power:
            return n
    return None


def judge(values, threshold: float, direction: str = "above", transform: str = "none", alpha: float = ALPHA) -> dict:
    """Aggregate a claim's per-seed values and give its verdict (see the module docstring).

    Returns ``mean``/``ci`` (two-sided 95%, the quantity's own scale), ``bound`` (the one-sided
    95% bound on the claimed side, same scale), ``n``, ``values``, ``signs`` (k of n on the
    claimed side), ``p_value`` (one-sided, for the claim), ``effect`` (``d_z`` and the mean
    distance from the threshold on the test's scale, with its 95% interval), ``seeds_needed``,
    ``verdict`` and ``why``."""
    from scipy import stats

    agg = mean_ci(values)
    vals = agg["values"]
    n = len(vals)
    sign = 1.0 if direction == "above" else -1.0
    if transform == "log":
        if threshold <= 0:
            raise ValueError("a log transform needs a positive threshold")
        vals_t = [math.log(v) for v in vals if v > 0]
        if len(vals_t) != n:
            vals_t = []  # a non-positive ratio: the log scale does not apply, say so below
        to_t, from_t = math.log, math.exp
    else:
        vals_t, to_t, from_t = list(vals), (lambda x: x), (lambda x: x)
    out = {
        **agg,
        "transform": transform,
        "bound": None,
        "signs": None,
        "p_value": None,
        "effect": None,
        "seeds_needed": None,
    }
    if n == 0 or len(vals_t) != n:
        why = "no data" if n == 0 else "a value is not positive, so the log-ratio test does not apply"
        return {**out, "verdict": "inconclusive", "why": why}
    d = [sign * (v - to_t(threshold)) for v in vals_t]
    k = sum(x > 0 for x in d)
    out["signs"] = {"k": k, "n": n}
    mean_d = sum(d) / n
    if n == 1:
        verdict = "reproduced" if mean_d > 0 else "not reproduced"
        return {**out, "verdict": verdict, "why": "one seed: indicative only (no test is possible)"}
    sd = float(stats.tstd(d)) if n > 1 else 0.0
    se = sd / math.sqrt(n)
    if se == 0:
        p_for = 0.0 if mean_d > 0 else 1.0
        p_against = 0.0 if mean_d < 0 else 1.0
        half = 0.0
        bound_d = mean_d
    else:
        tval = mean_d / se
        p_for = float(stats.t.sf(tval, n - 1))
        p_against = float(stats.t.cdf(tval, n - 1))
        half = float(stats.t.ppf(0.975, n - 1)) * se
        bound_d = mean_d - float(stats.t.ppf(1 - alpha, n - 1)) * se
    out["bound"] = from_t(to_t(threshold) + sign * bound_d)
    out["p_value"] = p_for
    out["effect"] = {"d_z": mean_d / sd if sd > 0 else None, "mean": mean_d, "ci": [mean_d - half, mean_d + half]}
    out["seeds_needed"] = seeds_needed(mean_d, sd, alpha)
    if p_for < alpha:
        return {**out, "verdict": "reproduced", "why": f"one-sided t test, p = {p_for:.2g}"}
    if p_against < alpha:
        return {
            **out,
            "verdict": "not reproduced",
            "why": f"beyond the threshold on the other side, p = {p_against:.2g}",
        }
    need = out["seeds_needed"]
    if need is None:
        why = "effect near the threshold: no feasible number of seeds would decide it"
    elif need > n:
        why = f"too few seeds for the observed spread: about {need} would decide it"
    else:
        why = "effect near the threshold for the observed spread"
    return {**out, "verdict": "inconclusive", "why": why}
