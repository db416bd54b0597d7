"""Beyond the paper: the edge of stability (Cohen et al., 2021 and 2022).

Gradient descent's sharpness (the top Hessian eigenvalue) tends to rise during training
(progressive sharpening) until it reaches the optimizer's stability threshold (2/lr for
plain SGD) and then hovers there; Adam's preconditioned sharpness (of ``P^-1 H``) does the
same at ``(2 + 2 beta1)/((1 - beta1) lr)``. This experiment trains VGG with and without BN
under plain SGD at the preset's three learning rates and under Adam at its two, records the
(preconditioned) sharpness against its threshold, the directional curvature along the
gradient, each layer's sharpness, the Hessian trace and its spectral density, and judges
three claims declared here: sharpness rises early, ends near the threshold, and BN changes
how soon it gets there.
"""

from __future__ import annotations

import math

import numpy as np

from landscape.claims import Claim, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.planning import RunSpec, paired_run
from landscape.report import figures as F
from landscape.results import RunRecords, series, stability_series

OPTIMIZERS = ("sgd", "adam")
BAND = 1.25  # "at the edge": median sharpness / threshold over the last quarter within [1/BAND, BAND]
EDGE = 0.9  # "reached the edge": the first probe step with sharpness / threshold >= EDGE


def settings(preset: dict) -> list[tuple[str, float]]:
    s = preset.get("stability") or {}
    return [("sgd", lr) for lr in s.get("sgd_lrs", [])] + [("adam", lr) for lr in s.get("adam_lrs", [])]


def stability_run(preset: dict, net: str, optimizer: str, lr: float, seed: int, overrides=()) -> RunSpec:
    return paired_run(
        "stability-vgg",
        "vgg",
        net,
        lr,
        seed,
        [preset.get("vgg", {}), (preset.get("stability") or {}).get("vgg", {})],
        overrides,
        optim={"name": optimizer},
        tag=optimizer,
        variant=optimizer,
    )


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return [
        stability_run(preset, net, opt, lr, s, overrides)
        for opt, lr in settings(preset)
        for net in ("standard", "bn")
        for s in seeds
    ]


# ------------------------------------------------------------------ per-run quantities (from records)


share_series = stability_series("over_threshold")  # (step, sharpness / threshold): of P^-1 H under Adam


def sharpening(run: RunRecords) -> float | None:
    """Progressive sharpening: the median sharpness over the second half of the probe steps
    divided by the first recorded value (above 1: it rose)."""
    s = share_series(run)
    late = [v for _, v in s[len(s) // 2 :]]
    if len(s) < 3 or s[0][1] <= 0:
        return None
    late.sort()
    return late[len(late) // 2] / s[0][1]


def edge_distance(run: RunRecords) -> float | None:
    """|log(median sharpness / threshold)| over the last quarter of the probe steps (0: at the edge)."""
    s = [v for _, v in share_series(run)]
    tail = sorted(s[-max(1, len(s) // 4) :])
    if not tail or tail[len(tail) // 2] <= 0:
        return None
    return abs(math.log(tail[len(tail) // 2]))


def steps_to_edge(run: RunRecords) -> float | None:
    """The first probe step where sharpness reaches EDGE x its threshold; a run that never does
    counts as its last step + 1 (censored: it got there later, if at all)."""
    s = share_series(run)
    if not s:
        return None
    return float(next((step for step, v in s if v >= EDGE), s[-1][0] + 1))


def _family(t, opt: str, net: str, metric, combine):
    """Per seed, ``combine`` over the family's learning rates of ``metric``."""
    sub = t.only(opt)
    per_lr = [sub.per_seed(metric, "vgg", net, lr) for lr in sub.lrs("vgg")]
    seeds = sorted({s for d in per_lr for s in d})
    out = {}
    for s in seeds:
        vals = [d.get(s) for d in per_lr]
        out[s] = combine(vals) if vals and all(v is not None and v > 0 for v in vals) else None
    return out


def _geomean(vals):
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _mean(vals):
    return sum(vals) / len(vals)


def claims(preset: dict) -> list[Claim]:
    out = []
    opts = [o for o in OPTIMIZERS if any(opt == o for opt, _ in settings(preset))]
    for opt in opts:
        what = "sharpness" if opt == "sgd" else "preconditioned sharpness (of P^-1 H)"
        for net in ("standard", "bn"):
            out.append(
                Claim(
                    f"stability.{opt}.{net}.sharpening",
                    f"{opt.upper()}, {net}: {what} rises during training (progressive sharpening)",
                    "median over the second half / first value, geometric mean over the lrs",
                    lambda t, o=opt, n=net: _family(t, o, n, sharpening, _geomean),
                    1.0,
                    transform="log",
                    layers="all parameters",
                )
            )
            out.append(
                Claim(
                    f"stability.{opt}.{net}.at_edge",
                    f"{opt.upper()}, {net}: {what} ends at its stability threshold (within a factor {BAND:g})",
                    "|log(median sharpness / threshold)| over the last quarter, mean over the lrs",
                    lambda t, o=opt, n=net: _family(t, o, n, edge_distance, _mean),
                    math.log(BAND),
                    direction="below",
                    layers="all parameters",
                )
            )
        out.append(
            Claim(
                f"stability.{opt}.bn_sooner",
                f"{opt.upper()}: BN reaches the edge of stability sooner",
                f"first probe step at {EDGE:g} x the threshold, standard / BN, geometric mean over the lrs",
                lambda t, o=opt: ratio(
                    _family(t, o, "standard", steps_to_edge, _geomean), _family(t, o, "bn", steps_to_edge, _geomean)
                ),
                1.0,
                transform="log",
            )
        )
    return out


def figures(t) -> list[Figure]:
    figs = []
    rows = [(f"{opt.upper()} lr {lr:g}", g) for opt, lr, g in t.settings("vgg", OPTIMIZERS)]
    if rows:
        figs.append(
            Figure(
                "Sharpness against the stability threshold (1 = the edge; Adam: of P^-1 H), directional "
                "curvature g'Hg/g'g and the Hessian trace",
                stability_panels,
                (rows, "edge of stability"),
            )
        )
        label, groups = rows[len(rows) // 2] if len(rows) > 2 else rows[0]
        figs.append(
            Figure(
                f"Per-layer sharpness (top eigenvalue of each layer's Hessian block), {label}",
                F.layer_sharpness_heatmaps,
                (groups, label),
            )
        )
        figs.append(
            Figure(
                f"Hessian spectral density (stochastic Lanczos quadrature) at three steps, {label}",
                F.density_panels,
                (groups, label),
            )
        )
    return figs


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: sharpness / threshold rising towards 1 is progressive sharpening; hovering at 1 is the "
            "edge of stability (for Adam the sharpness of P^-1 H against 38/lr). The trace, per-layer sharpness and "
            "spectral density show where the curvature sits."
        ),
        name="stability",
        title="Beyond the paper: the edge of stability",
        anchor="stability",
        help="Beyond the paper: VGG +/- BN under SGD (3 lrs) and Adam (2 lrs): sharpness against its stability "
        "threshold, per layer, trace and spectral density.",
        plan=plan,
        claims=claims,
        figures=figures,
        paper=False,
        preset_key="stability",
    )
)


# ------------------------------------------------------------------ this experiment's own figures


@F.drawing
def stability_panels(rows: list[tuple[str, dict[str, list[RunRecords]]]], title: str) -> bytes:
    """One row per optimizer setting: sharpness / threshold (1 = the edge of stability; Adam's
    is of P^-1 H), the directional curvature g'Hg/g'g, and the Hessian trace, per network."""
    panels = (
        ("sharpness / threshold", stability_series("over_threshold"), True),
        ("g'Hg / g'g", series("curvature", "curvature"), True),
        ("Hessian trace", series("hessian_trace", "hessian_trace"), False),
    )
    fig = F.row_panels(rows, panels, title + " (trace: error bars 2 standard errors)", ones=(0,))
    for row, (_, groups) in zip(np.array(fig.axes).reshape(len(rows), len(panels)), rows):
        for net, runs in groups.items():  # the trace's standard error, first seed
            errors = dict(series("hessian_trace", "trace_stderr")(runs[0]))
            recs = [(s, v, errors[s]) for s, v in series("hessian_trace", "hessian_trace")(runs[0]) if s in errors]
            if recs:
                s, v, e = zip(*recs)
                row[2].errorbar(s, v, yerr=[2 * x for x in e], fmt="none", ecolor=F.color_of(net), alpha=0.6, lw=0.8)
    return F.to_png(fig)
