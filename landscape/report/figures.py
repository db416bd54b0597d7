"""Figures from run records (seaborn/matplotlib), returned as PNG bytes. Nothing here measures:
every number drawn is a recorded one, or a mean/confidence band over seeds of recorded ones.

Plotting libraries are imported when the first figure is drawn, never at import (``landscape
--help`` does not pay for them), and drawing never changes the user's matplotlib state: figures
are ``matplotlib.figure.Figure`` objects (no pyplot, no backend switch), drawn inside seaborn's
style and context managers and an rc context that is restored afterwards.
"""

from __future__ import annotations

import colorsys
import functools
import importlib
import io
import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from landscape.names import NETS, label_of
from landscape.results import RunRecords, probe_series, probe_views, series
from landscape.stats import mean_ci

MAX_POINTS = 300  # long series are downsampled for drawing


class _Lazy:
    """A module imported on first use (seaborn and matplotlib cost about a second to import)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self._name), attr)


sns = _Lazy("seaborn")


MISSING_GLYPHS: set[str] = set()  # characters of names the figure font cannot draw (said once, in the report)


def drawing(fn):
    """A figure function: drawn in the report's style, leaving matplotlib's global settings as they were.
    A character the font lacks (a CJK run name) is collected in MISSING_GLYPHS instead of warning per glyph."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import matplotlib

        with (
            matplotlib.rc_context(),
            sns.axes_style("whitegrid"),
            sns.plotting_context("paper", font_scale=1.05),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            matplotlib.rcParams["mathtext.default"] = "regular"
            out = fn(*args, **kwargs)
        for w in caught:
            text = str(w.message)
            if "missing from font" in text:
                MISSING_GLYPHS.add(text.split("(")[1].split(")")[0] if "(" in text else text)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out

    return wrapper


def subplots(nrows: int = 1, ncols: int = 1, figsize=(6, 4), squeeze: bool = True):
    """``plt.subplots`` without pyplot: a Figure nobody else holds (no global figure manager)."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


@functools.cache
def _palette() -> list:
    return list(sns.color_palette("colorblind", 10)) + list(sns.color_palette("dark", 10))


@dataclass(frozen=True)
class Figure:
    """One figure of a report section: ``draw(*args)`` returns PNG bytes."""

    title: str
    draw: Callable[..., bytes]
    args: tuple = ()


_OTHERS: dict[str, int] = {}  # names outside the paper's network kinds, in the order a report first draws them


def color_of(net: str) -> tuple:
    """A fixed colour per network kind (the same in every figure); other names (runs outside experiments) get the
    bright palette's colours in the order they are first drawn, so two runs never share a colour or fade into two
    dark greys (the same name keeps its colour in every figure of a report)."""
    kinds = list(NETS)
    if net in kinds:
        return _palette()[kinds.index(net)]
    bright = [c for c in sns.color_palette("bright", 10) if colorsys.rgb_to_hls(*c)[2] > 0.5]  # not its grey
    index = _OTHERS.setdefault(net, len(_OTHERS))
    return bright[index % len(bright)]


def text(label: str) -> str:
    """A user-provided name as a figure label: ``$`` would start matplotlib's mathtext."""
    return str(label).replace("$", r"\$")


def downsample(steps, values):
    if len(steps) <= MAX_POINTS:
        return list(steps), list(values)
    idx = np.unique(np.linspace(0, len(steps) - 1, MAX_POINTS).round().astype(int))
    return [steps[i] for i in idx], [values[i] for i in idx]


# The report's page shows a figure at most this wide (1,172 px at 96 dpi: main's 1,220 px less its padding); a
# wider figure is shrunk to it, and its text with it, so a grid of panels shares this width instead.
DPI = 96
REPORT_WIDTH_IN = 12.2


def panel_width(columns: int, most: float = 4.0) -> float:
    """Inches per panel for ``columns`` panels side by side, so that the row fits the report's width (its
    labels then read at their size, not shrunk below it)."""
    return min(most, (REPORT_WIDTH_IN - 0.4) / max(columns, 1))


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def seed_band(series_per_seed: list[list[tuple[int, float]]]):
    """Mean and 95% CI over seeds at the steps all seeds recorded (one seed: the line, no band)."""
    by_step = defaultdict(list)
    for one in series_per_seed:
        for step, v in one:
            if v is not None:
                by_step[step].append(v)
    steps = sorted(s for s, vals in by_step.items() if len(vals) == len(series_per_seed))
    mean, low, high = [], [], []
    for s in steps:
        agg = mean_ci(by_step[s])
        mean.append(agg["mean"] if agg["mean"] is not None else np.nan)
        lo, hi = agg["ci"] if agg["ci"] else (np.nan, np.nan)
        low.append(lo)
        high.append(hi)
    return steps, mean, low, high


def plot_lines(ax, groups: dict[str, list[RunRecords]], series_fn, logy: bool = False) -> None:
    """One line per net (mean over its seeds, with a 95% band when there are several). With ``logy``, a
    series that reaches zero or below (a Hessian trace at initialisation under BN is large and negative)
    gets a symmetric log axis, linear below the decade of its smallest magnitude, rather than a log axis that
    would drop those points without a word."""
    drawn = []
    for net, runs in groups.items():
        steps, mean, low, high = seed_band([series_fn(r) for r in runs])
        if not steps:
            continue
        s, m = downsample(steps, mean)
        drawn += m
        ax.plot(
            s,
            m,
            color=color_of(net),
            marker="o" if len(s) == 1 else None,  # one point is drawn too
            label=text(label_of(net)) + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""),
        )
        if len(runs) > 1:
            s, lo = downsample(steps, low)
            _, hi = downsample(steps, high)
            ax.fill_between(s, lo, hi, color=color_of(net), alpha=0.2, linewidth=0)
        for r in runs:
            if r.state == "diverged" and r.status.get("diverged_step"):
                ax.axvline(r.status["diverged_step"], color=color_of(net), ls=":", lw=1)
    if logy:
        finite_ys = [y for y in drawn if math.isfinite(y)]
        if any(y <= 0 for y in finite_ys):
            smallest = min((abs(y) for y in finite_ys if y != 0), default=1.0)
            ax.set_yscale("symlog", linthresh=10.0 ** math.floor(math.log10(smallest)))  # a decade: clean ticks
        else:
            ax.set_yscale("log")


def metric_series(kind: str, key: str):
    return lambda run: [(r["step"], r.get(key)) for r in run.kind(kind) if r.get(key) is not None]


def diverged(groups: dict[str, list[RunRecords]]) -> bool:
    return any(r.state == "diverged" and r.status.get("diverged_step") for runs in groups.values() for r in runs)


def training_curves(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Train and test loss and accuracy over steps; a curve no run recorded (a loop without a test split) is left
    out, not drawn empty."""
    return _curves(
        groups,
        title,
        [
            ("train", "loss", "train loss", False),
            ("train", "acc", "train accuracy", False),
            ("test", "loss", "test loss", False),
            ("test", "acc", "test accuracy", False),
        ],
    )


def regression_curves(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Train and test loss (log scale) over steps, for runs without an accuracy."""
    return _curves(
        groups,
        title,
        [("train", "loss", "train loss (log scale)", True), ("test", "loss", "test loss (log scale)", True)],
    )


@drawing
def _curves(groups: dict[str, list[RunRecords]], title: str, panels: list[tuple]) -> bytes:
    runs = [r for rs in groups.values() for r in rs]
    panels = [p for p in panels if any(metric_series(p[0], p[1])(r) for r in runs)] or panels[:1]
    fig, axes = subplots(1, len(panels), figsize=(3.8 * len(panels) + 0.5, 3.3), squeeze=False)
    for ax, (kind, key, label, logy) in zip(axes[0], panels):
        plot_lines(ax, groups, metric_series(kind, key), logy=logy)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(text(title) + ("  (dotted: step of divergence)" if diverged(groups) else ""), y=1.03)
    return to_png(fig)


def middle_layer(runs: list[RunRecords]) -> str | None:
    layers = probed_layers(runs, "activation_stats")
    return layers[len(layers) // 2] if layers else None


@drawing
def activation_ridges(groups: dict[str, list[RunRecords]], layer: str | int, title: str, max_steps: int = 8) -> bytes:
    """Per net, the histogram of the layer's input at each probe step, stacked (a ridge plot), every panel on one x
    scale (the union of their ranges) so that compared networks' distributions compare.
    ``layer``: a module name, or the paper's layer number k, found in each run's own records."""
    nets = list(groups)
    fig, axes = subplots(1, len(nets), figsize=(3.6 * len(nets), 4.2), squeeze=False)
    spans: list[float] = []
    for ax, net in zip(axes[0], nets):
        run = groups[net][0]
        name = layer_name(run, "activation_stats", layer) if isinstance(layer, int) else layer
        recs = [
            (step, hists[name]) for step, hists in probe_views(run, "activation_stats", "histograms") if name in hists
        ]
        if len(recs) > max_steps:
            recs = [recs[i] for i in np.unique(np.linspace(0, len(recs) - 1, max_steps).round().astype(int))]
        for i, (_, h) in enumerate(recs):
            if not h["counts"]:
                continue
            edges, counts = np.array(h["edges"]), np.array(h["counts"], dtype=float)
            spans += [float(edges.min()), float(edges.max())]
            centers = (edges[:-1] + edges[1:]) / 2
            dens = counts / max(counts.max(), 1) * 0.9
            ax.fill_between(centers, i, i + dens, color=color_of(net), alpha=0.55, linewidth=0.6, edgecolor="k")
        ax.set_yticks(range(len(recs)))
        ax.set_yticklabels([str(step) for step, _ in recs])
        ax.set_ylabel("step")
        ax.set_xlabel(text(f"input of {name}" if not isinstance(layer, int) else f"input of layer {layer} ({name})"))
        ax.set_title(text(label_of(net) + f" ({run.name})"), fontsize=9)
    finite_spans = [x for x in spans if math.isfinite(x)]
    if finite_spans and max(finite_spans) > min(finite_spans):
        for ax in axes[0]:
            ax.set_xlim(min(finite_spans), max(finite_spans))
    fig.suptitle(text(title) + (" (one x scale)" if len(nets) > 1 else ""), y=1.02)
    return to_png(fig)


MAX_LABELS = 40  # a heatmap labels at most this many rows (every k-th beyond): an 88-layer model stays readable
MAX_HEIGHT = 11.0  # inches: a figure of many layers is squeezed, never 10,000 pixels tall


def heatmap_axes(ax, net: str, groups: dict[str, list[RunRecords]], names: bool = False) -> None:
    """Labels of a layers-by-steps heatmap of one network."""
    ax.set_xlabel("step")
    ax.set_ylabel("layer" if names else "layer k (weight layers from the input)", fontsize=8)
    name = groups[net][0].name
    ax.set_title(text(label_of(net) if label_of(net) == name else f"{label_of(net)} ({name})"), fontsize=9)
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.tick_params(axis="y", labelsize=7 if names else 7, labelrotation=0)


def row_labels(layers: list[str], names: bool) -> list[str]:
    """A heatmap's row labels: the layers' names (or the paper's numbers k), every k-th when there are many."""
    labels = [text(n) for n in layers] if names else [str(k) for k in range(1, len(layers) + 1)]
    stride = -(-len(labels) // MAX_LABELS)
    return [label if i % stride == 0 else "" for i, label in enumerate(labels)]


def heatmap_height(rows: int, panels: int) -> float:
    """Inches per panel row: a readable row per layer, the whole figure at most MAX_HEIGHT tall."""
    return min(max(2.8, 0.14 * min(rows, MAX_LABELS) + 1.2), MAX_HEIGHT / max(panels, 1))


@drawing
def ics_heatmaps(groups: dict[str, list[RunRecords]], title: str, names: bool = False) -> bytes:
    """Layers against probe steps, per net: ||G - G'|| (log colour) and cos(G, G'). Compared networks share one
    colour scale per measure, so a colour means the same number in every panel. ``names``: label the rows with the
    layers' names (a user's model) instead of the paper's layer numbers."""
    nets = [n for n in groups if groups[n][0].probe("ics_opti")]
    rows = max([len(probed_layers(groups[n][:1], "ics_opti")) for n in nets] or [1])
    fig, axes = subplots(
        len(nets) or 1, 2, figsize=(12, heatmap_height(rows, len(nets)) * max(len(nets), 1)), squeeze=False
    )
    grids = {}
    for net in nets:
        layers = probed_layers(groups[net][:1], "ics_opti")
        for key in ("l2", "cosine"):
            recs = probe_series(groups[net][0], "ics_opti", "ics_l2" if key == "l2" else "ics_cos")
            grid = np.array([[(v or {}).get(layer, np.nan) for _, v in recs] for layer in layers], dtype=float)
            if key == "l2":  # the first layer's G' = G exactly: blank, not log(0)
                grid = np.log10(np.where(grid > 0, grid, np.nan))
            grids[net, key] = (grid, [step for step, _ in recs], layers)
    shared = {}
    for key in ("l2", "cosine"):
        values = np.concatenate([g[np.isfinite(g)] for (n, k), (g, _, _) in grids.items() if k == key] or [np.zeros(0)])
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        shared[key] = {"vmin": -1, "vmax": 1} if key == "cosine" else {"vmin": lo, "vmax": hi if hi > lo else lo + 1}
    for row, net in zip(axes, nets):
        for ax, key, cmap in zip(row, ("l2", "cosine"), ("mako", "vlag_r")):
            grid, steps, layers = grids[net, key]
            sns.heatmap(
                grid,
                ax=ax,
                cmap=cmap,
                **shared[key],
                xticklabels=steps,
                yticklabels=row_labels(layers, names),
                cbar_kws={"label": "log10 ||G - G'||" if key == "l2" else "cos(G, G')"},
            )
            heatmap_axes(ax, net, groups, names)
    fig.suptitle(text(title) + " (one colour scale per measure across networks)", y=1.01)
    fig.tight_layout()
    return to_png(fig)


@drawing
def layer_heatmaps(groups: dict[str, list[RunRecords]], probe: str, quantity: str, label: str, title: str) -> bytes:
    """A per-layer quantity (log10) against probe steps, one panel per network, the rows its layers' names, one
    colour scale for all (a user's model: per-layer sharpness, gradient norm)."""
    nets = [n for n in groups if groups[n][0].probe(probe)]
    grids = {}
    for net in nets:
        layers = probed_layers(groups[net][:1], probe)
        recs = probe_series(groups[net][0], probe, quantity)
        grid = np.array([[(v or {}).get(layer, np.nan) for _, v in recs] for layer in layers], dtype=float)
        grids[net] = (np.log10(np.where(grid > 0, grid, np.nan)), [s for s, _ in recs], layers)
    values = np.concatenate([g[np.isfinite(g)] for g, _, _ in grids.values()] or [np.zeros(0)])
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    rows = max([len(layers) for _, _, layers in grids.values()] or [1])
    fig, axes = subplots(
        1, max(len(nets), 1), figsize=(6.5 * max(len(nets), 1), heatmap_height(rows, 1)), squeeze=False
    )
    for ax, net in zip(axes[0], nets):
        grid, steps, layers = grids[net]
        sns.heatmap(
            grid,
            ax=ax,
            cmap="mako",
            vmin=lo,
            vmax=hi if hi > lo else lo + 1,
            xticklabels=steps,
            yticklabels=row_labels(layers, True),
            cbar_kws={"label": f"log10 {label}"},
        )
        heatmap_axes(ax, net, groups, names=True)
    fig.suptitle(text(title), y=1.02)
    fig.tight_layout()
    return to_png(fig)


# Every other scalar a probe records, as a panel of the generic figure (runs outside an experiment).
OTHER_QUANTITIES = (
    ("curvature", "curvature", "g'Hg / g'g", True),
    ("hessian_trace", "hessian_trace", "Hessian trace", False),
    ("batch_sharpness", "batch_sharpness", "batch sharpness", True),
    ("edge_eigenvalues", "edge_count", "eigenvalues above the line", False),
    ("update_sweep", "update_beta_eff", "beta_eff along the update", True),
    ("update_sweep", "alpha", "alpha (Cockpit)", False),
    ("loss_slice", "slice_rise", "loss rise, random direction", True),
    ("loss_slice", "slice_curvature", "curvature, random direction", False),
    ("layer_grad_norm", "grad_first_over_last", "gradient norm, first / last layer", True),
    ("activation_stats", "mean_shift", "activation shift (mean)", True),
)


def other_quantities(runs: list[RunRecords]) -> list[tuple]:
    return [q for q in OTHER_QUANTITIES if any(series(q[0], q[1])(r) for r in runs)]


@drawing
def probe_panels(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Every other recorded scalar (curvature, trace, batch sharpness, ...) over training, a panel each."""
    panels = other_quantities([r for runs in groups.values() for r in runs])
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (probe, key, label, logy) in zip(axes.flat, panels):
        plot_lines(ax, groups, series(probe, key), logy=logy)
        ax.set_xlabel("step")
        ax.set_ylabel(label, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(text(title), y=1.02)
    fig.tight_layout()
    return to_png(fig)


@drawing
def ics_curves(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    fig, axes = subplots(1, 2, figsize=(10, 3.3))
    for ax, key, logy in zip(axes, ("l2", "cosine"), (True, False)):
        plot_lines(ax, groups, series("ics_opti", "mean_l2" if key == "l2" else "mean_cos"), logy=logy)
        ax.set_xlabel("step")
        ax.set_ylabel("||G - G'||" if key == "l2" else "cos(G, G')")
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].ticklabel_format(axis="y", useOffset=False)
    axes[0].legend(fontsize=8)
    fig.suptitle(text(title) + " (mean over layers after the first)", y=1.03)
    return to_png(fig)


@drawing
def landscape_panels(groups: dict[str, list[RunRecords]], title: str, phase_at: float | None = None) -> bytes:
    """Figure 4: loss-variation band, gradient-predictiveness band (min-max over the eta grid),
    effective beta-smoothness, and sharpness against the optimizer's stability threshold: the raw
    Hessian's and, where recorded, that of P^-1 H (Adam's preconditioned one) in panels of their own,
    each with the thresholds that bound it. ``phase_at``: the step where the claims' early phase ends,
    drawn as a dotted line on a log step axis (so the early probe steps are visible)."""
    runs_all = [r for runs in groups.values() for r in runs]
    kinds = [
        (probe, key, thr, label)
        for probe, key, thr, label in SHARPNESS_KINDS
        if probe == "sharpness" or any(r.probe(probe) for r in runs_all)
    ]
    n = 3 + len(kinds)
    cols = math.ceil(n / math.ceil(n / 3))  # at most three panels a row: 4 panels are 2 x 2, 5 are 3 + 2
    rows = math.ceil(n / cols)
    fig, grid = subplots(rows, cols, figsize=(panel_width(cols, most=5.8) * cols, 3.5 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    axes = axes[:n]
    for net, runs in groups.items():
        for ax, key in ((axes[0], "losses"), (axes[1], "grad_changes")):
            pts = [(s, v) for s, v in probe_views(runs[0], "gradient_sweep", key) if v]
            if pts:
                s = [p[0] for p in pts]
                ax.fill_between(
                    s,
                    [min(v) for _, v in pts],
                    [max(v) for _, v in pts],
                    color=color_of(net),
                    alpha=0.35,
                    label=label_of(net),
                )
                ax.plot(s, [min(v) for _, v in pts], color=color_of(net), lw=0.8)
                ax.plot(s, [max(v) for _, v in pts], color=color_of(net), lw=0.8)
    plot_lines(axes[2], groups, series("gradient_sweep", "beta_eff"), logy=True)
    labels = ["loss L(w - eta g), min-max over eta", "||grad L(w - eta g) - g||, min-max", "effective beta-smoothness"]
    for ax, (probe, key, thr_key, label) in zip(axes[3:], kinds):
        plot_lines(ax, groups, series(probe, key), logy=True)
        thresholds = sorted({thr for runs in groups.values() for _, thr in series(probe, thr_key)(runs[0])})
        threshold_lines(ax, thresholds)
        labels.append(label)
    for ax, label in zip(axes, labels):
        ax.set_xlabel("step" if phase_at is None else "step (log; dotted: early phase ends)")
        ax.set_ylabel(label)
        if phase_at is not None and ax.has_data():  # an empty panel (no sharpness probe) stays as it is
            ax.set_xscale("log")
            ax.axvline(phase_at, color="0.4", ls=":", lw=1)
    for ax in axes[:2]:
        ax.set_yscale("log")
    for ax in (axes[0], axes[2]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(text(title))
    fig.tight_layout()  # room for each panel's labels beside its neighbours' ticks
    return to_png(fig)


# The two sharpnesses, each drawn in a panel of its own against the threshold that bounds it.
SHARPNESS_KINDS = (
    ("sharpness", "sharpness", "sharpness_threshold", "top eigenvalue of H"),
    (
        "preconditioned_sharpness",
        "preconditioned_sharpness",
        "preconditioned_threshold",
        "top eigenvalue of P^-1 H",
    ),
)


def threshold_lines(ax, thresholds: list[float]) -> None:
    """Dashed stability thresholds, their values said in the panel's title (above the axes, never on a curve)."""
    for thr in thresholds:
        ax.axhline(thr, color="k", ls="--", lw=1)
    if thresholds:
        ax.set_title("dashed: threshold " + ", ".join(f"{t:.3g}" for t in thresholds), fontsize=8, loc="right")


# ------------------------------------------------------------------ the paper's named layers

LAYER_COUNTING = "layer k counts the layers with weights from the input, from 1 (the paper's figure labels)"


def probed_layers(runs: list[RunRecords], probe: str) -> list[str]:
    """The layer names a probe recorded, in forward order (from the first record that has them)."""
    for run in runs:
        for _, layers in probe_views(run, probe, "layers"):
            if layers:
                return layers
    return []


def numbered(runs: list[RunRecords], probe: str, numbers) -> tuple[list[int], list[int]]:
    """The paper's layer numbers that every run's recorded layers reach, and those beyond some run.
    Layer k is resolved in each run's own records (:func:`layer_name`): networks with and without
    normalisation modules between their weight layers name the same layer differently."""
    counts = [len(probed_layers([r], probe)) for r in runs]
    counts = [c for c in counts if c] or [0]
    present = [k for k in numbers if 1 <= k <= min(counts)]
    return present, [k for k in numbers if k not in present]


def layer_name(run: RunRecords, probe: str, k: int) -> str | None:
    """The name of the paper's layer k (counting the recorded layers with weights from the input, from 1) in ``run``."""
    layers = probed_layers([run], probe)
    return layers[k - 1] if 1 <= k <= len(layers) else None


# ------------------------------------------------------------------ regimes of one network


def row_panels(rows: list[tuple[str, dict[str, list[RunRecords]]]], panels, title: str, ones=()) -> bytes:
    """A grid: one row per setting (label, runs by network), one column per ``(name, series, logy)``
    panel; ``ones`` are the columns that get a reference line at 1."""
    fig, axes = subplots(
        len(rows), len(panels), figsize=(panel_width(len(panels)) * len(panels), 2.8 * len(rows)), squeeze=False
    )
    for row, (label, groups) in zip(axes, rows):
        for ax, (name, fn, logy) in zip(row, panels):
            plot_lines(ax, groups, fn, logy=logy)
            if not logy:
                ax.ticklabel_format(axis="y", useOffset=False)  # cosines near 1 read as themselves, not 1e-6+9.9999e-1
            ax.set_ylabel(f"{name}\n{label}", fontsize=8)
            ax.set_xlabel("step")
        for i in ones:
            row[i].axhline(1.0, color="k", ls="--", lw=1)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title, y=1.01)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ the edge of stability


@drawing
def layer_sharpness_heatmaps(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Per network: log10 of each layer's sharpness (its Hessian block's top eigenvalue) against probe steps."""
    nets = [n for n in groups if groups[n][0].probe("layer_sharpness")]
    fig, axes = subplots(1, max(len(nets), 1), figsize=(6.5 * max(len(nets), 1), 3.6), squeeze=False)
    for ax, net in zip(axes[0], nets):
        recs = probe_series(groups[net][0], "layer_sharpness", "layer_sharpness")
        layers = probed_layers(groups[net][:1], "layer_sharpness")
        grid = np.array(
            [
                [(lambda x: np.log10(x) if x is not None and x > 0 else np.nan)((v or {}).get(layer)) for _, v in recs]
                for layer in layers
            ],
            dtype=float,
        )
        sns.heatmap(
            grid,
            ax=ax,
            cmap="mako",
            xticklabels=[step for step, _ in recs],
            yticklabels=[str(k) for k in range(1, len(layers) + 1)],
            cbar_kws={"label": "log10 layer sharpness"},
        )
        heatmap_axes(ax, net, groups)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return to_png(fig)


@drawing
def density_panels(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Per network, the recorded spectral-density histogram at the first, middle and last probe step."""
    nets = [n for n in groups if groups[n][0].probe("spectral_density")]
    fig, axes = subplots(1, max(len(nets), 1), figsize=(6 * max(len(nets), 1), 3.3), squeeze=False)
    for ax, net in zip(axes[0], nets):
        recs = probe_views(groups[net][0], "spectral_density", "histogram")
        picks = [recs[i] for i in sorted({0, len(recs) // 2, len(recs) - 1})] if recs else []
        for shade, (step, h) in zip(np.linspace(0.35, 1.0, len(picks)), picks):
            edges, mass = np.array(h["edges"]), np.array(h["density"], dtype=float)
            centers = (edges[:-1] + edges[1:]) / 2
            ax.plot(
                centers,
                np.where(mass > 0, mass, np.nan),
                marker=".",
                color=color_of(net),
                alpha=shade,
                label=f"step {step}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("mass per bin")
        ax.set_title(f"{label_of(net)} ({groups[net][0].name})", fontsize=9)
        if picks:
            ax.legend(fontsize=7)
    fig.suptitle(title, y=1.03)
    return to_png(fig)


def run_slices(run: RunRecords) -> dict[str, dict]:
    """A run's finished slices by name (``RUN/slices/NAME/slice.json``)."""
    from landscape.slicing import read_slices

    return {s.get("name", "?"): s for s in read_slices(run.path)}


@drawing
def run_slice_panels(run: RunRecords) -> bytes:
    """Every finished slice of one run (``landscape slice``): a 1D slice as a curve, a 2D one as filled
    log-loss contours with the run's point (+); on a PCA plane, the trajectory's checkpoints projected on it
    (Li et al. Section 7), with each axis's share of the variance."""
    slices = list(run_slices(run).items())
    fig, axes = subplots(1, len(slices), figsize=(4.6 * len(slices), 3.8), squeeze=False)
    for ax, (name, s) in zip(axes[0], slices):
        axis = np.array(s.get("axis", []), dtype=float)
        loss = np.array([np.nan if v is None else v for v in s.get("loss", [])], dtype=float)
        about = s.get("about") or {}
        ax.set_title(text(name), fontsize=9)
        if len(s.get("shape", [])) == 2 and axis.size > 1:
            n = s["shape"][0]
            z = np.log10(np.clip(loss.reshape(n, n).T, 1e-6, None))
            cs = ax.contourf(axis, axis, z, levels=20, cmap="viridis")
            fig.colorbar(cs, ax=ax, label="log10 loss")
            ax.plot([0], [0], marker="+", color="w", ms=14, mew=2)
            traj = about.get("trajectory")
            if traj:
                pts = np.array(traj, dtype=float)
                ax.plot(pts[:, 0], pts[:, 1], color="w", marker="o", ms=3, lw=1)
            explained = about.get("explained")
            ax.set_xlabel("direction 1" + (f" ({explained[0]:.0%} of the variance)" if explained else ""))
            ax.set_ylabel("direction 2" + (f" ({explained[1]:.0%})" if explained and len(explained) > 1 else ""))
        else:
            ax.plot(axis, loss, marker=".")
            ax.set_yscale("log")
            ax.set_xlabel("coordinate along the direction")
            ax.set_ylabel("loss")
    fig.suptitle(text(f"slices of {run.name}"), y=1.03)
    fig.tight_layout()
    return to_png(fig)
