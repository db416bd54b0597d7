"""Beyond the paper: the edge-of-stability results the field cites, on the probes of this tool.

Three experiments, each on Cohen et al.'s ``fc-tanh`` (two hidden layers of 200 tanh units, PyTorch's
default initialisation) trained with the square loss to one-hot labels on a CIFAR-10 subset whose
pixels are centred and standardised (Cohen et al.'s preprocessing):

- ``eos-gd`` (Cohen et al., 2021): full-batch gradient descent at three learning rates; the
  sharpness (top Hessian eigenvalue of the full-batch loss) rises (progressive sharpening) until it
  reaches 2/lr, then hovers there (the edge of stability);
- ``eos-adam`` (Cohen et al., 2022, "Adaptive Gradient Methods at the Edge of Stability"):
  full-batch Adam (beta1 = 0.9); the preconditioned sharpness (of ``P^-1 H``) settles at
  ``(2 + 2 beta1) / ((1 - beta1) lr) = 38/lr``, where the raw sharpness does not;
- ``eos-sgd`` (Andreyev and Beneventano, "Edge of Stochastic Stability"): minibatch SGD at two batch
  sizes; the batch sharpness (mean over minibatches of ``g_B' H_B g_B / ||g_B||^2``) settles at
  2/lr while the full-batch top eigenvalue stays below it.

Declared here before any evaluation run (seeds 0, 1, ...) existed (commit order shows it); the
presets' learning rates and lengths come from calibration runs on seed 100 by the rule in
docs/edge.md. Every "at the edge" reads the last ``TAIL`` of training: the share of its probe
steps whose value / threshold lies within ``[1/BAND, BAND]``, claimed above ``SHARE``.

- ``eos_gd.sharpening`` (headline): per seed, the geometric mean over the learning rates of the
  sharpness when it first reaches ``EDGE`` x 2/lr (or its largest value if it never does) over
  its value at step 1, above ``RISE``;
- ``eos_gd.at_edge`` (headline): per seed, the mean over the learning rates of the share of the
  last ``TAIL`` of the probe steps with sharpness / (2/lr) in the band, above ``SHARE``;
- ``eos_adam.preconditioned_at_edge`` (headline): the same for the sharpness of ``P^-1 H`` against 38/lr;
- ``eos_adam.raw_not_at_edge`` (headline): per seed, the mean over the learning rates of
  ``|log(median raw sharpness / (38/lr))|`` over the last ``TAIL``, above ``log(BAND)``;
- ``eos_sgd.batch_at_edge`` (headline, per batch size): the share for the batch sharpness against 2/lr;
- ``eos_sgd.full_below`` (headline, per batch size): the median full-batch sharpness / (2/lr)
  over the last ``TAIL``, below ``1/BAND``;
- per learning rate or batch size, each measure again as a diagnostic, and ``eos_sgd.smaller_batch_flatter``
  (diagnostic): full-batch sharpness at the smaller batch over the larger's, below 1.
"""

from __future__ import annotations

import dataclasses
import math

from landscape.claims import Claim, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.planning import RunSpec, paired_run
from landscape.report import figures as F
from landscape.results import RunRecords, med, probe_series, series, stability_series

BAND = 1.2  # "at the edge": value / threshold within [1/BAND, BAND]
TAIL = 0.3  # the last 30% of training's probe steps
SHARE = 0.8  # at the edge for at least 80% of those steps
EDGE = 0.9  # "reached the edge": value / threshold >= 0.9
RISE = 1.25  # progressive sharpening: the sharpness rose by at least 25% before reaching the edge
ARCH, NET = "mlp", "standard"


def section(preset: dict, key: str) -> dict:
    return preset.get(key) or {}


def run_of(
    preset: dict,
    key: str,
    family: str,
    optimizer: str,
    lr: float,
    seed: int,
    overrides=(),
    variant: str = "",
    extra: dict | None = None,
) -> RunSpec:
    s = section(preset, key)
    return paired_run(
        family,
        ARCH,
        NET,
        lr,
        seed,
        [s.get("run", {}), *([extra] if extra else [])],
        overrides,
        optim={"name": optimizer, **(s.get("optim") or {})},
        tag=variant,
        variant=variant,
    )


# ------------------------------------------------------------------ per-run quantities (from records)


def _total(run: RunRecords) -> int | None:
    try:
        return int(run.config["steps"])
    except (KeyError, TypeError, ValueError):
        return None


def tail(run: RunRecords, probe: str, key: str) -> list[float]:
    """The quantity's values at the probe steps in the last TAIL of training (None values kept out)."""
    total = _total(run)
    if not total:
        return []
    return [v for s, v in probe_series(run, probe, key) if s > (1 - TAIL) * total and v is not None]


def share_at_edge(probe: str, key: str):
    """The share of the last TAIL's probe steps with ``key`` (a value / threshold) in [1/BAND, BAND]."""

    def fn(run: RunRecords) -> float | None:
        total = _total(run)
        steps = [(s, v) for s, v in probe_series(run, probe, key) if total and s > (1 - TAIL) * total]
        if not steps:
            return None
        return sum(v is not None and 1 / BAND <= v <= BAND for _, v in steps) / len(steps)

    fn.__name__ = f"share_{key}"
    return fn


def tail_median(probe: str, key: str):
    def fn(run: RunRecords) -> float | None:
        return med(tail(run, probe, key))

    return fn


def log_distance(probe: str, key: str):
    """``|log(median value / threshold)|`` over the last TAIL (0: at the edge)."""

    def fn(run: RunRecords) -> float | None:
        m = med(tail(run, probe, key))
        return abs(math.log(m)) if m is not None and m > 0 else None

    return fn


def sharpening(run: RunRecords) -> float | None:
    """The sharpness when it first reaches EDGE x threshold (its largest value if it never does)
    over its value at the first probe step (of P^-1 H under Adam: the one its threshold bounds)."""
    s = stability_series("value")(run)
    shares = dict(stability_series("over_threshold")(run))
    if len(s) < 2 or s[0][1] <= 0:
        return None
    reached = next((v for step, v in s if shares.get(step, 0) >= EDGE), None)
    return (reached if reached is not None else max(v for _, v in s)) / s[0][1]


def _over_lrs(metric, combine):
    """Per seed, ``combine`` over the runs' learning rates of ``metric`` (None if any is missing)."""

    def measure(t) -> dict:
        per_lr = [t.per_seed(metric, ARCH, NET, lr) for lr in t.lrs(ARCH)]
        seeds = sorted({s for d in per_lr for s in d})
        out = {}
        for s in seeds:
            vals = [d.get(s) for d in per_lr]
            out[s] = combine(vals) if vals and all(v is not None for v in vals) else None
        return out

    return measure


def geomean(vals):
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if all(v > 0 for v in vals) else None


def mean(vals):
    return sum(vals) / len(vals)


def at_lr(lr: float, metric):
    return lambda t: t.per_seed(metric, ARCH, NET, lr)


def edge_note(probe: str, key: str, what: str):
    """The median value / threshold over the last TAIL and the median count of eigenvalues above the line."""

    def note(t) -> str | None:
        parts = []
        for lr in t.lrs(ARCH):
            runs = [run for _, run in t.select(ARCH, NET, lr)]
            share = med(tail_median(probe, key)(r) for r in runs)
            count = med(tail_median("edge_eigenvalues", "edge_count")(r) for r in runs)
            if share is not None:
                parts.append(
                    f"lr {lr:g}: {what} {share:.2f}"
                    + (f", {count:g} eigenvalues above the line" if count is not None else "")
                )
        return "median over the last 30% of steps: " + "; ".join(parts) if parts else None

    return note


# ------------------------------------------------------------------ eos-gd


def plan_gd(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    return [
        run_of(preset, "eos_gd", "eos-gd", "sgd", lr, s, overrides)
        for lr in section(preset, "eos_gd").get("lrs", [])
        for s in seeds
    ]


def claims_gd(preset: dict) -> list[Claim]:
    at_edge = share_at_edge("sharpness", "over_threshold")
    note = edge_note("sharpness", "over_threshold", "sharpness / (2/lr)")
    out = [
        Claim(
            "eos_gd.sharpening",
            "GD: the sharpness rises during training (progressive sharpening; Cohen et al. 2021)",
            "sharpness on first reaching 0.9 x 2/lr over its value at step 1, geometric mean over the lrs",
            _over_lrs(sharpening, geomean),
            RISE,
            transform="log",
            layers="all parameters",
            note=note,
        ),
        Claim(
            "eos_gd.at_edge",
            f"GD: the sharpness then hovers at 2/lr (the edge of stability) through the last {TAIL:.0%} of training",
            f"share of those probe steps with sharpness / (2/lr) in [1/{BAND:g}, {BAND:g}], mean over the lrs",
            _over_lrs(at_edge, mean),
            SHARE,
            layers="all parameters",
            note=note,
        ),
    ]
    for lr in section(preset, "eos_gd").get("lrs", []):
        out.append(
            Claim(
                f"eos_gd.lr{lr:g}.sharpening",
                f"GD at lr {lr:g}: progressive sharpening",
                "sharpness on first reaching 0.9 x 2/lr over its value at step 1",
                at_lr(lr, sharpening),
                RISE,
                transform="log",
                headline=False,
            )
        )
        out.append(
            Claim(
                f"eos_gd.lr{lr:g}.at_edge",
                f"GD at lr {lr:g}: sharpness at 2/lr through the last {TAIL:.0%} of training",
                f"share of probe steps in [1/{BAND:g}, {BAND:g}] x 2/lr",
                at_lr(lr, at_edge),
                SHARE,
                headline=False,
            )
        )
    return [dataclasses.replace(c, statement="eos_gd") for c in out]  # every claim tests its paper's statement


def _rows(t, variants: bool):
    if variants:
        return [
            (f"{v} (lr {lr:g})", g)
            for v in t.variants()
            for lr in t.only(v).lrs(ARCH)
            if (g := t.only(v).groups(ARCH, lr))
        ]
    return [(f"lr {lr:g}", g) for lr in t.lrs(ARCH) if (g := t.groups(ARCH, lr))]


def figures_gd(t) -> list[Figure]:
    rows = _rows(t, False)
    if not rows:
        return []
    panels = (
        ("sharpness / (2/lr)", series("sharpness", "over_threshold"), True),
        ("eigenvalues above 0.75 x 2/lr", series("edge_eigenvalues", "edge_count"), False),
        ("train loss", train_metric("loss"), True),
    )
    return [
        Figure(
            "Full-batch GD: sharpness against 2/lr (dashed: the edge), how many eigenvalues sit above 1.5/lr, "
            "and the train loss",
            edge_panels,
            (rows, panels, "edge of stability, GD"),
        )
    ]


# ------------------------------------------------------------------ eos-adam


def plan_adam(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    return [
        run_of(preset, "eos_adam", "eos-adam", "adam", lr, s, overrides)
        for lr in section(preset, "eos_adam").get("lrs", [])
        for s in seeds
    ]


def claims_adam(preset: dict) -> list[Claim]:
    pre = share_at_edge("preconditioned_sharpness", "preconditioned_over_threshold")
    raw = log_distance("sharpness", "over_preconditioned_threshold")
    note = edge_note("preconditioned_sharpness", "preconditioned_over_threshold", "preconditioned sharpness / (38/lr)")
    raw_note = edge_note("sharpness", "over_preconditioned_threshold", "raw sharpness / (38/lr)")
    out = [
        Claim(
            "eos_adam.preconditioned_at_edge",
            f"Adam: the preconditioned sharpness (of P^-1 H) hovers at "
            f"38/lr through the last {TAIL:.0%} of training (Cohen et al. 2022)",
            f"share of those probe steps with it / (38/lr) in [1/{BAND:g}, {BAND:g}], mean over the lrs",
            _over_lrs(pre, mean),
            SHARE,
            layers="all parameters",
            note=note,
        ),
        Claim(
            "eos_adam.raw_not_at_edge",
            "Adam: the raw sharpness (of H) does not sit at 38/lr",
            "|log(median raw sharpness / (38/lr))| over the last 30% of steps, mean over the lrs",
            _over_lrs(raw, mean),
            math.log(BAND),
            layers="all parameters",
            note=raw_note,
        ),
    ]
    for lr in section(preset, "eos_adam").get("lrs", []):
        out.append(
            Claim(
                f"eos_adam.lr{lr:g}.preconditioned_at_edge",
                f"Adam at lr {lr:g}: P^-1 H at 38/lr",
                f"share of probe steps in [1/{BAND:g}, {BAND:g}] x 38/lr",
                at_lr(lr, pre),
                SHARE,
                headline=False,
            )
        )
        out.append(
            Claim(
                f"eos_adam.lr{lr:g}.sharpening",
                f"Adam at lr {lr:g}: the preconditioned sharpness rises",
                "on first reaching 0.9 x 38/lr over its value at the first probe",
                at_lr(lr, sharpening),
                RISE,
                transform="log",
                headline=False,
            )
        )
    return [dataclasses.replace(c, statement="eos_adam") for c in out]  # every claim tests its paper's statement


def figures_adam(t) -> list[Figure]:
    rows = _rows(t, False)
    if not rows:
        return []
    panels = (
        ("sharpness of P^-1 H / (38/lr)", series("preconditioned_sharpness", "preconditioned_over_threshold"), True),
        ("raw sharpness of H / (38/lr)", series("sharpness", "over_preconditioned_threshold"), True),
        ("eigenvalues of P^-1 H above 0.75 x 38/lr", series("edge_eigenvalues", "edge_count"), False),
        ("train loss", train_metric("loss"), True),
    )
    return [
        Figure(
            "Full-batch Adam: the preconditioned and the raw sharpness against 38/lr (dashed: the edge)",
            edge_panels,
            (rows, panels, "edge of stability, Adam"),
        )
    ]


# ------------------------------------------------------------------ eos-sgd


def batch_variant(b: int) -> str:
    return f"b{b}"


def plan_sgd(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    s = section(preset, "eos_sgd")
    out = []
    for b in s.get("batch_sizes", []):
        extra = {"data": {"batch_size": b}, "probes": {"batch_sharpness": {"batch_size": b}}}
        out += [
            run_of(preset, "eos_sgd", "eos-sgd", "sgd", s.get("lr", 0.01), seed, overrides, batch_variant(b), extra)
            for seed in seeds
        ]
    return out


def claims_sgd(preset: dict) -> list[Claim]:
    s = section(preset, "eos_sgd")
    sizes = list(s.get("batch_sizes", []))
    batch_edge = share_at_edge("batch_sharpness", "batch_over_threshold")
    full = tail_median("sharpness", "over_threshold")
    out = []
    for b in sizes:
        v = batch_variant(b)
        note = edge_note("batch_sharpness", "batch_over_threshold", "batch sharpness / (2/lr)")
        full_note = edge_note("sharpness", "over_threshold", "full-batch sharpness / (2/lr)")
        out.append(
            Claim(
                f"eos_sgd.{v}.batch_at_edge",
                f"SGD at batch size {b}: the batch sharpness hovers at 2/lr "
                f"through the last {TAIL:.0%} of training (Edge of Stochastic Stability)",
                f"share of those probe steps with batch sharpness / (2/lr) in [1/{BAND:g}, {BAND:g}]",
                lambda t, v=v: _only_one(t.only(v), batch_edge),
                SHARE,
                layers="all parameters",
                note=lambda t, v=v, n=note: n(t.only(v)),
            )
        )
        out.append(
            Claim(
                f"eos_sgd.{v}.full_below",
                f"SGD at batch size {b}: the full-batch sharpness stays below 2/lr",
                "median full-batch sharpness / (2/lr) over the last 30% of steps",
                lambda t, v=v: _only_one(t.only(v), full),
                1 / BAND,
                direction="below",
                layers="all parameters",
                note=lambda t, v=v, n=full_note: n(t.only(v)),
            )
        )
    if len(sizes) >= 2:
        small, large = batch_variant(min(sizes)), batch_variant(max(sizes))
        out.append(
            Claim(
                "eos_sgd.smaller_batch_flatter",
                f"SGD: the smaller batch ({min(sizes)}) ends flatter than the larger ({max(sizes)})",
                "median full-batch sharpness over the last 30%, smaller / larger",
                lambda t: ratio(_only_one(t.only(small), full), _only_one(t.only(large), full)),
                1.0,
                direction="below",
                transform="log",
                headline=False,
            )
        )
    return [dataclasses.replace(c, statement="eos_sgd") for c in out]  # every claim tests its paper's statement


def _only_one(t, metric) -> dict:
    """Per seed, ``metric`` of the run at the setting's one learning rate."""
    lrs = t.lrs(ARCH)
    return t.per_seed(metric, ARCH, NET, lrs[0]) if len(lrs) == 1 else {}


def figures_sgd(t) -> list[Figure]:
    rows = _rows(t, True)
    if not rows:
        return []
    panels = (
        ("batch sharpness / (2/lr)", series("batch_sharpness", "batch_over_threshold"), True),
        ("full-batch sharpness / (2/lr)", series("sharpness", "over_threshold"), True),
        ("eigenvalues above 0.75 x 2/lr", series("edge_eigenvalues", "edge_count"), False),
        ("train loss", train_metric("loss"), True),
    )
    return [
        Figure(
            "Minibatch SGD per batch size: batch sharpness and full-batch sharpness against 2/lr (dashed: the edge)",
            edge_panels,
            (rows, panels, "edge of stochastic stability"),
        )
    ]


ABOUT = (
    "What to look for: each value divided by its stability threshold, so the dashed line at 1 is the edge; "
    "progressive sharpening is a rise towards it, the edge of stability a value that then hovers at it."
)

register(
    Experiment(
        name="eos-gd",
        title="Beyond the paper: the edge of stability under full-batch gradient descent",
        anchor="eos-gd",
        help="Beyond the paper: Cohen et al. 2021: full-batch GD's sharpness rises to 2/lr and hovers there (3 lrs, "
        "an MLP on a CIFAR-10 subset).",
        plan=plan_gd,
        claims=claims_gd,
        figures=figures_gd,
        paper=False,
        preset_key="eos_gd",
        about=ABOUT,
    )
)
register(
    Experiment(
        name="eos-adam",
        title="Beyond the paper: Adam at the edge of stability",
        anchor="eos-adam",
        help="Beyond the paper: Cohen et al. 2022: full-batch Adam's preconditioned sharpness settles at 38/lr, the "
        "raw sharpness does not.",
        plan=plan_adam,
        claims=claims_adam,
        figures=figures_adam,
        paper=False,
        preset_key="eos_adam",
        about=ABOUT,
    )
)
register(
    Experiment(
        name="eos-sgd",
        title="Beyond the paper: the edge of stochastic stability",
        anchor="eos-sgd",
        help="Beyond the paper: Andreyev and Beneventano: minibatch SGD's batch sharpness settles at 2/lr while the "
        "full-batch sharpness stays below (2 batch sizes).",
        plan=plan_sgd,
        claims=claims_sgd,
        figures=figures_sgd,
        paper=False,
        preset_key="eos_sgd",
        about=ABOUT,
    )
)


# ------------------------------------------------------------------ this experiment's own figures


def train_metric(key: str):
    """A run's ``[(step, train record's key)]``, for a panel of :func:`edge_panels`."""
    return F.metric_series("train", key)


@F.drawing
def edge_panels(rows: list[tuple[str, dict[str, list[RunRecords]]]], panels, title: str) -> bytes:
    """One row per setting (learning rate, batch size), one column per ``(name, series, logy)`` panel; a
    panel of a value over its threshold ("... / (2/lr)") gets the edge, 1, as a dashed line. A panel that no
    run has a value for (a probe the preset did not enable) is left out, not drawn empty."""
    every_run = [r for _, groups in rows for runs in groups.values() for r in runs]
    panels = [p for p in panels if any(p[1](r) for r in every_run)] or panels
    return F.to_png(
        F.row_panels(rows, panels, title, ones=tuple(i for i, (name, _, _) in enumerate(panels) if " / (" in name))
    )
