"""Claims: what the paper says, as a quantity measured per seed (paired runs), a threshold
and a direction, declared in each experiment's module before any run exists; and judging
them against the records.

A claim's ``measure`` is a small named function of the experiment's runs (a
:class:`~landscape.results.RunTable`) returning ``{seed: value}``; :func:`judge` aggregates
the values over seeds (:mod:`landscape.stats`) and gives the verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from landscape.results import RunRecords, RunTable, final_test, final_train, med, probe_series
from landscape.stats import judge

PerSeed = dict[int, "float | None"]


@dataclass(frozen=True)
class Claim:
    id: str  # stable identifier, e.g. "fig4.vgg.beta_eff"
    text: str  # the paper's claim in words
    quantity: str  # what is measured per seed, in words
    measure: Callable[[RunTable], PerSeed]  # per-seed value, paired by seed
    threshold: float
    direction: str = "above"  # the claim holds when the quantity is above (or below) the threshold
    transform: str = "none"  # the test's scale: "log" for ratios (see landscape.stats)
    layers: str = ""  # which layers the quantity aggregates, where it is per layer

    def judge(self, table: RunTable) -> dict:
        """The per-seed values (paired by seed), their aggregate and the one-sided verdict."""
        per_seed = self.measure(table)
        result = judge([per_seed[s] for s in sorted(per_seed)], self.threshold, self.direction, self.transform)
        return {"id": self.id, "claim": self.text, "quantity": self.quantity, **result, "threshold": self.threshold,
                "direction": self.direction, "layers": self.layers,
                "per_seed": {str(s): per_seed[s] for s in sorted(per_seed)}}


# ------------------------------------------------------------------ paired per-seed arithmetic


def ratio(a: PerSeed, b: PerSeed) -> PerSeed:
    """Per seed a/b, None where either is missing (or b is 0)."""
    return {s: a[s] / b[s] if a.get(s) is not None and b.get(s) not in (None, 0) else None for s in sorted(a)}


def diff(a: PerSeed, b: PerSeed) -> PerSeed:
    return {s: a[s] - b[s] if a.get(s) is not None and b.get(s) is not None else None for s in sorted(a)}


# ------------------------------------------------------------------ per-run metrics


def final_train_loss(run: RunRecords) -> float | None:
    """Final train loss; a diverged run counts as infinitely bad (it is compared, not dropped)."""
    return math.inf if run.state == "diverged" else final_train(run)["loss"]


def final_train_acc(run: RunRecords) -> float | None:
    return None if run.state == "diverged" else final_train(run)["acc"]


def final_test_acc(run: RunRecords) -> float | None:
    """Final test accuracy; a diverged run counts as chance-or-worse (0)."""
    return 0.0 if run.state == "diverged" else final_test(run)["acc"]


def median_probe(probe: str, fn: Callable[[dict], float | None]) -> Callable[[RunRecords], float | None]:
    """The median over a run's probe steps of ``fn(values)``."""
    def metric(run: RunRecords) -> float | None:
        return med(v for _, v in probe_series(run, probe, fn))

    metric.__name__ = f"median_{probe}_{getattr(fn, '__name__', 'value')}"
    return metric
