"""Claims: what the paper says, as a quantity measured per seed (paired runs), a threshold
and a direction, declared in each experiment's module before any run exists; and judging
them against the records.

A claim's ``measure`` is a small named function of the experiment's runs (a
:class:`~landscape.results.RunTable`) returning ``{seed: value}``; :func:`judge` aggregates
the values over seeds (:mod:`landscape.stats`) and gives the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from landscape.results import RunTable, final_test_acc, final_train_acc, final_train_loss, median_probe  # noqa: F401 (claims' metrics)
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
    headline: bool = True  # False: a diagnostic (a regime, a schedule), shown in its section only
    note: Callable[[RunTable], str | None] | None = None  # context read off the records (e.g. edge of stability)
    statement: str | None = None  # the published statement it tests (a key of landscape.report.holds.STATEMENTS)

    def judge(self, table: RunTable) -> dict:
        """The per-seed values (paired by seed), their aggregate and the one-sided verdict."""
        per_seed = self.measure(table)
        result = judge([per_seed[s] for s in sorted(per_seed)], self.threshold, self.direction, self.transform)
        return {
            "id": self.id,
            "claim": self.text,
            "quantity": self.quantity,
            **result,
            "threshold": self.threshold,
            "direction": self.direction,
            "layers": self.layers,
            "headline": self.headline,
            "note": self.note(table) if self.note else None,
            "statement": self.statement,
            "per_seed": {str(s): per_seed[s] for s in sorted(per_seed)},
        }


# ------------------------------------------------------------------ claims on part of the runs


def in_variant(variant: str, measure: Callable[[RunTable], PerSeed]) -> Callable[[RunTable], PerSeed]:
    """``measure`` on the runs of one variant only (e.g. one DLN regime)."""

    def restricted(t: RunTable) -> PerSeed:
        return measure(t.only(variant))

    return restricted


SCHEDULE_PARTS = ("every", "log")


def schedule_part(config: dict | None, part: str):
    """The steps of one part of a run's ``mixed`` probe schedule, as a predicate: ``every``
    (every N steps and step 1) or ``log`` (the log-spaced steps). A run probed on another
    schedule keeps all its steps for the part its schedule is, none for the other."""
    from landscape.probes.schedules import every, log_spaced  # noqa: I001 (only claims on schedules need it)

    try:
        p, total = config["probes"], int(config["steps"])
        kind, n, points = p["schedule"], int(p["every"]), int(p["points"])
    except (KeyError, TypeError, ValueError):
        return lambda step: False
    if kind == "mixed":
        return every(n) if part == "every" else log_spaced(total, points)
    return (lambda step: True) if kind == part else (lambda step: False)


StepsOf = Callable[["dict | None"], Callable[[int], bool]]  # a run's config -> which probe steps to keep


def keep_steps(t: RunTable, steps_of: StepsOf) -> RunTable:
    """The table with each run's probe records cut to the steps ``steps_of(run.config)`` keeps."""
    return t.map_runs(lambda run: run.keep_probe_steps(steps_of(run.config)))


def on_steps(steps_of: StepsOf, measure: Callable[[RunTable], PerSeed]) -> Callable[[RunTable], PerSeed]:
    """``measure`` from the probe records at the steps ``steps_of`` keeps only."""

    def restricted(t: RunTable) -> PerSeed:
        return measure(keep_steps(t, steps_of))

    return restricted


def on_schedule(part: str, measure: Callable[[RunTable], PerSeed]) -> Callable[[RunTable], PerSeed]:
    """``measure`` from the probe records of one part of the runs' schedule only (see :func:`schedule_part`)."""
    if part not in SCHEDULE_PARTS:
        raise ValueError(f"part must be one of {SCHEDULE_PARTS}")
    return on_steps(lambda config: schedule_part(config, part), measure)


PHASES = ("early", "later")
EARLY_SHARE = 0.1  # "early": the first tenth of training, where the paper says BN's effects are largest


def early_end(config: dict | None) -> float | None:
    """The last step of a run's early phase (a tenth of its steps); None if its length is unknown."""
    try:
        total = int(config["steps"])
    except (KeyError, TypeError, ValueError):
        return None
    return EARLY_SHARE * total if total > 0 else None


def training_phase(config: dict | None, phase: str):
    """The steps of one phase of a run's training, as a predicate: ``early`` (steps up to a
    tenth of the run's steps) or ``later`` (the rest). Unlike :func:`schedule_part` this does not
    depend on the probe schedule, only on where in training a step falls."""
    cut = early_end(config)
    if cut is None:
        return lambda step: False
    return (lambda step: step <= cut) if phase == "early" else (lambda step: step > cut)


def in_phase(phase: str, measure: Callable[[RunTable], PerSeed]) -> Callable[[RunTable], PerSeed]:
    """``measure`` from the probe records of one phase of training only (see :func:`training_phase`)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}")
    return on_steps(lambda config: training_phase(config, phase), measure)


# ------------------------------------------------------------------ paired per-seed arithmetic


def ratio(a: PerSeed, b: PerSeed) -> PerSeed:
    """Per seed a/b, None where either is missing (or b is 0)."""
    return {s: a[s] / b[s] if a.get(s) is not None and b.get(s) not in (None, 0) else None for s in sorted(a)}


def diff(a: PerSeed, b: PerSeed) -> PerSeed:
    return {s: a[s] - b[s] if a.get(s) is not None and b.get(s) is not None else None for s in sorted(a)}
