"""Statistics over seeds: means and intervals (Student t, scipy), the test behind every claim's verdict, and the
multiplicity correction over an experiment's headline claims.

Every claim is directional ("BN's loss band is narrower": standard / BN above 1). For each seed, the claim's
quantity is moved to the test's scale (``transform``: ``log`` for ratios, so 2x and 0.5x are equally far from 1)
and measured from the threshold in the claimed direction, ``d_s``. What the tables print is what is tested: for a
ratio, the geometric mean with the exponential of the log-scale interval; for a difference, the mean with its
interval. The verdict reads that interval:

- ``reproduced``: the two-sided 95% interval lies entirely beyond the threshold on the claimed side (a one-sided
  t test at 2.5%: the one-sided 97.5% bound is beyond it);
- ``not reproduced``: it lies entirely on the other side;
- ``inconclusive``: it holds the threshold, with the reason and a range of seeds that would decide it.

A claim whose true value sits exactly on its threshold gets a decisive verdict 5% of the time (2.5% each way).
With one seed no test is possible: the verdict follows the sign of ``d`` and is marked indicative. A seed whose
value is infinite (a diverged run: a ratio over a loss of inf) is counted on its side, never dropped: the verdict
then comes from the exact sign test (binomial, 2.5% each way), and no interval is printed. Missing values (a run
that did not finish) are left out and counted as missing. Beside the test: the sign count (k of n seeds on the
claimed side) and the effect size ``d_z = mean(d) / sd(d)``.

Over an experiment's headline claims (its family), Holm's step-down procedure adjusts the two-sided p-values at
5%: the adjusted verdict is decisive only where the family-wise error rate stays at 5% (:func:`holm`).
"""

from __future__ import annotations

import math

from landscape.results import finite

LEVEL = 0.05  # two-sided level of every claim's interval and verdict: 2.5% each way
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


def seeds_needed(effect: float, sd: float, alpha: float = LEVEL, power: float = POWER) -> int | None:
    """The smallest number of seeds for which the two-sided test at ``alpha`` (``alpha/2`` one way) detects a mean
    ``effect`` (either sign) with standard deviation ``sd`` with probability ``power`` (noncentral t); None if no
    effect or more than MAX_SEEDS_ESTIMATE seeds."""
    from scipy import stats

    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return None
    if sd == 0:
        return 2
    dz = abs(effect) / sd
    for n in range(2, MAX_SEEDS_ESTIMATE + 1):
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        if stats.nct.sf(crit, n - 1, dz * math.sqrt(n)) >= power:
            return n
    return None


def seeds_range(effect_ci: list[float], sd: float) -> list[int | None]:
    """The seeds :func:`seeds_needed` gives at the two ends of the effect's 95% interval: a pilot's observed effect
    is itself uncertain, so one number would be a guess (None: more than MAX_SEEDS_ESTIMATE, or an end at 0)."""
    lo, hi = sorted(abs(x) for x in effect_ci)
    crosses = effect_ci[0] <= 0 <= effect_ci[1]
    return [seeds_needed(hi, sd), None if crosses else seeds_needed(lo, sd)]


def judge(values, threshold: float, direction: str = "above", transform: str = "none", alpha: float = LEVEL) -> dict:
    """Aggregate a claim's per-seed values and give its verdict (see the module docstring).

    Returns ``mean`` and ``ci`` as tested (for ``log``: the geometric mean and the exponentiated log-scale 95%
    interval; else the arithmetic ones), ``bound`` (the one-sided bound at the test's level, same scale), ``n``,
    ``values``, ``signs`` (k of n on the claimed side), ``p_value`` (one-sided, for the claim), ``p_two`` (two-sided,
    what the family's correction reads), ``effect`` (``d_z``, the mean distance from the threshold on the test's
    scale and its interval), ``seeds_needed`` (a range), ``diverged`` (seeds counted at infinity), ``missing``,
    ``verdict`` and ``why``."""
    from scipy import stats

    given = list(values or [])
    present = [float(v) for v in given if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]
    sign = 1.0 if direction == "above" else -1.0
    if transform == "log":
        if threshold <= 0:
            raise ValueError("a log transform needs a positive threshold")
        if any(v < 0 for v in present):
            return {
                "transform": transform,
                "values": present,
                "n": len(present),
                "mean": None,
                "ci": None,
                "bound": None,
                "signs": None,
                "p_value": None,
                "p_two": None,
                "effect": None,
                "seeds_needed": None,
                "diverged": 0,
                "missing": len(given) - len(present),
                "verdict": "inconclusive",
                "why": "a value is negative, so the log-ratio test does not apply",
            }
        # a ratio of 0 or of inf is a diverged run in its denominator or numerator: infinitely far on the log scale
        to_t, from_t = (lambda x: math.log(x) if x > 0 else -math.inf), math.exp
    else:
        to_t, from_t = (lambda x: x), (lambda x: x)
    infinite = [v for v in present if math.isinf(to_t(v))]
    vals = [v for v in present if not math.isinf(to_t(v))]
    out = {
        "transform": transform,
        "values": vals,
        "n": len(present),
        "mean": None,
        "ci": None,
        "bound": None,
        "signs": None,
        "p_value": None,
        "p_two": None,
        "effect": None,
        "seeds_needed": None,
        "diverged": len(infinite),
        "missing": len(given) - len(present),
    }
    n = out["n"]
    if n == 0:
        return {**out, "verdict": "inconclusive", "why": "no data"}
    d = [sign * (to_t(v) - to_t(threshold)) for v in present]
    k = sum(x > 0 for x in d)
    out["signs"] = {"k": k, "n": n}
    if infinite:  # a diverged seed: counted on its side by the exact sign test, no interval
        p_for = float(stats.binomtest(k, n, 0.5, alternative="greater").pvalue)
        p_against = float(stats.binomtest(k, n, 0.5, alternative="less").pvalue)
        out.update(p_value=p_for, p_two=min(1.0, 2 * min(p_for, p_against)))
        why = f"{len(infinite)} diverged seed(s) counted on their side: exact sign test, {k} of {n}"
        if p_for < alpha / 2:
            return {**out, "verdict": "reproduced", "why": f"{why}, p = {p_for:.2g}"}
        if p_against < alpha / 2:
            return {**out, "verdict": "not reproduced", "why": f"{why}, p = {p_against:.2g}"}
        return {**out, "verdict": "inconclusive", "why": f"{why}: too few seeds for a sign test to decide"}
    mean_t = sum(to_t(v) for v in vals) / n
    out["mean"] = from_t(mean_t)
    mean_d = sum(d) / n
    if n == 1:
        verdict = "reproduced" if mean_d > 0 else "not reproduced"
        return {**out, "verdict": verdict, "why": "one seed: indicative only (no test is possible)"}
    sd = float(stats.tstd(d))
    se = sd / math.sqrt(n)
    t_crit = float(stats.t.ppf(1 - alpha / 2, n - 1))
    if se == 0:
        p_for, p_against, half = (0.0 if mean_d > 0 else 1.0), (0.0 if mean_d < 0 else 1.0), 0.0
    else:
        tval = mean_d / se
        p_for, p_against, half = float(stats.t.sf(tval, n - 1)), float(stats.t.cdf(tval, n - 1)), t_crit * se
    out["ci"] = [from_t(mean_t - half), from_t(mean_t + half)]
    out["bound"] = from_t(to_t(threshold) + sign * (mean_d - half))
    out["p_value"], out["p_two"] = p_for, min(1.0, 2 * min(p_for, p_against))
    out["effect"] = {"d_z": mean_d / sd if sd > 0 else None, "mean": mean_d, "ci": [mean_d - half, mean_d + half]}
    out["seeds_needed"] = seeds_range(out["effect"]["ci"], sd) if sd > 0 else None
    if p_for < alpha / 2:
        return {**out, "verdict": "reproduced", "why": f"95% interval beyond the threshold, one-sided p = {p_for:.2g}"}
    if p_against < alpha / 2:
        return {**out, "verdict": "not reproduced", "why": f"95% interval on the other side, p = {p_against:.2g}"}
    low, high = out["seeds_needed"] or [None, None]
    if low is None:
        why = "the interval holds the threshold and no feasible number of seeds would decide it at this effect"
    elif high is None:
        why = (
            f"the interval holds the threshold: at least {low} seeds would decide it, and the effect may be 0 "
            "(a rough guide from the effect's interval)"
        )
    else:
        why = (
            f"the interval holds the threshold: {low}-{high} seeds would decide it (from the effect's 95% "
            "interval: a rough guide)"
        )
    return {**out, "verdict": "inconclusive", "why": why}


def holm(p_values: list[float | None], alpha: float = LEVEL) -> list[bool | None]:
    """Holm's step-down procedure over a family's two-sided p-values: which hypotheses it rejects keeping the
    family-wise error rate at ``alpha`` (None where a claim has no p-value: one seed, or no data)."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[bool | None] = [None if p is None else False for p in p_values]
    m = len(indexed)
    for rank, (p, i) in enumerate(indexed):
        if p > alpha / (m - rank):
            break
        out[i] = True
    return out


def adjust(claims: list[dict], alpha: float = LEVEL) -> list[dict]:
    """The claims with ``adjusted_verdict``: over the headline claims (the experiment's family), a decisive verdict
    stays decisive only where Holm's procedure rejects it at the family-wise ``alpha``; diagnostics are not in the
    family and keep their raw verdict. One-seed verdicts stay as they are (marked indicative already)."""
    family = [c for c in claims if c.get("headline", True)]
    rejected = holm([c.get("p_two") for c in family], alpha)
    decided = {id(c): r for c, r in zip(family, rejected)}
    out = []
    for c in claims:
        r = decided.get(id(c))
        adjusted = c["verdict"] if r is None or r else "inconclusive"
        out.append({**c, "adjusted_verdict": adjusted, "family_size": len(family) if id(c) in decided else None})
    return out
