"""Beyond the paper: the loss landscape around the trained weights (Li et al., NeurIPS 2018).

For the standard and BN VGG of the smoothness experiment (the same runs, trained once), at the
end of training: a 2D slice along two filter-normalised random directions (biases and BN
parameters left out, BN in eval mode with running statistics recomputed at each point: the
network a user evaluates), and the line from the initialisation to the trained weights
(Goodfellow et al., 2015), both on a fixed subset of the training set.

Declared here before any slice of these runs was computed (commit order shows it):

- headline: "BN's trained weights sit in a wider basin": the fraction of the 2D grid whose
  loss is within a factor ``BASIN_FACTOR`` of the loss at the trained point, BN / standard,
  above 1 (one-sided paired test on the log-ratio, as every ratio claim here);
- diagnostics, one per network: "the loss falls monotonically from the initialisation to the
  trained weights": the largest rise between neighbouring points of the interpolation, below
  ``BUMP`` nats.
"""

from __future__ import annotations

import math

import numpy as np

from landscape.claims import Claim, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.names import label_of
from landscape.planning import RunSpec, vgg_runs
from landscape.report import figures as F
from landscape.results import RunRecords

BASIN_FACTOR = 2.0  # "in the basin": L <= 2 L(trained point)
BUMP = 0.05  # nats: a rise smaller than this along the interpolation counts as monotone
DEFAULTS = {
    "grid": 11,
    "range": [-1.0, 1.0],
    "subset": 512,
    "batch_size": 256,
    "bn": "recompute",
    "bn_batches": 2,
    "interpolate_grid": 11,
}


def settings(preset: dict) -> dict:
    return {**DEFAULTS, **(preset.get("slices") or {})}


def plan(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    return vgg_runs(preset, ("standard", "bn"), preset["lrs"][:1], seeds, overrides)


def specs(preset: dict):
    from landscape.slicing import SliceSpec

    s = settings(preset)
    common = dict(subset=s["subset"], batch_size=s["batch_size"], bn=s["bn"], bn_batches=s["bn_batches"])
    return {
        "random-2d": SliceSpec("random", 2, s["grid"], s["range"][0], s["range"][1], **common),
        "from-init": SliceSpec("interpolate", 1, s["interpolate_grid"], 0.0, 1.0, **common),
    }


def after(preset: dict, runs: list[RunSpec], runs_dir, data_dir, device, log) -> None:
    """Each finished run's slices (computed once; a killed one resumes)."""
    from landscape.results import read_run
    from landscape.slicing import slice_run

    for spec in runs:
        path = runs_dir / spec.name
        if not path.exists() or read_run(path).state != "done":
            continue
        for name, s in specs(preset).items():
            if not (path / "slices" / name / "slice.json").exists():
                slice_run(path, s, name, data_dir, device, log=log)


# ------------------------------------------------------------------ per-run quantities (from the slices)


def _slice(run, name: str) -> dict | None:
    from landscape.slicing import read_slices

    return next((s for s in read_slices(run.path) if s.get("name") == name), None)


def basin_fraction(run) -> float | None:
    s = _slice(run, "random-2d")
    if not s or not s.get("centre") or s["centre"].get("loss") is None:
        return None
    bound = BASIN_FACTOR * s["centre"]["loss"]
    losses = [x for x in s["loss"] if x is not None]
    return sum(x <= bound for x in losses) / len(s["loss"]) if s["loss"] else None


def largest_bump(run) -> float | None:
    s = _slice(run, "from-init")
    if not s or any(x is None for x in s["loss"]):
        return None
    return max(0.0, *(b - a for a, b in zip(s["loss"], s["loss"][1:])))


def claims(preset: dict) -> list[Claim]:
    out = [
        Claim(
            "slices.vgg.basin",
            "BN's trained weights sit in a wider basin (Li et al.'s filter-normalised 2D slice)",
            f"fraction of the grid within {BASIN_FACTOR:g}x the trained point's loss, BN / standard",
            lambda t: ratio(t.per_seed(basin_fraction, "vgg", "bn"), t.per_seed(basin_fraction, "vgg", "standard")),
            1.0,
            transform="log",
            layers="all weights but biases and BN parameters",
            statement="basin",
        )
    ]
    for net in ("standard", "bn"):
        out.append(
            Claim(
                f"slices.vgg.{net}.monotone",
                f"{'BN' if net == 'bn' else 'standard'} VGG: the loss falls "
                "monotonically from the initialisation to the trained weights (Goodfellow et al.)",
                "largest rise between neighbouring points of the interpolation (nats)",
                lambda t, n=net: t.per_seed(largest_bump, "vgg", n),
                BUMP,
                direction="below",
                headline=False,
            )
        )
    return out


def figures(t) -> list[Figure]:
    groups = t.groups("vgg")
    if not groups:
        return []
    return [
        Figure(
            "Loss around the trained weights: 2D filter-normalised random slice (contours; + the trained "
            "point) and the line from the initialisation (t = 0) to the trained weights (t = 1)",
            slice_panels,
            (groups, "slices"),
        ),
        Figure("The same 2D slices to hover: each cell names its point, loss and accuracy", slice_hover, (groups,)),
    ]


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: a wide, round basin around the + (BN's, by the paper's account) against a narrow or "
            "skewed one; along the interpolation, a loss that falls without a bump. Slices use BN in eval mode with "
            "running statistics recomputed at each point (landscape slice --bn recompute)."
        ),
        name="slices",
        title="Beyond the paper: the loss landscape around the trained weights",
        anchor="slices",
        help="Li et al.'s filter-normalised 2D slices and the interpolation from initialisation, standard vs BN VGG.",
        plan=plan,
        claims=claims,
        figures=figures,
        paper=False,
        preset_key="slices",
        after=after,
    )
)


# ------------------------------------------------------------------ this experiment's own figures


@F.drawing
def slice_panels(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Per network (its first seed): the 2D random slice as filled log-loss contours with the
    trained point marked; last panel: every network's interpolation from the initialisation."""
    nets = [(net, F.run_slices(runs[0])) for net, runs in groups.items()]
    fig, axes = F.subplots(1, len(nets) + 1, figsize=(4.6 * (len(nets) + 1), 3.8), squeeze=False)
    axes = axes[0]
    for ax, (net, sl) in zip(axes, nets):
        s = sl.get("random-2d")
        ax.set_title(F.text(label_of(net)))
        if not s or s.get("dims", len(s.get("shape", []))) == 1 or len(s.get("shape", [])) != 2:
            ax.text(0.5, 0.5, "no 2D slice", ha="center", va="center", transform=ax.transAxes)
            continue
        n = s["shape"][0]
        z = np.array([np.nan if v is None else v for v in s["loss"]], dtype=float).reshape(n, n)
        axis = np.array(s["axis"], dtype=float)
        cs = ax.contourf(axis, axis, np.log10(np.clip(z.T, 1e-6, None)), levels=20, cmap="viridis")
        ax.contour(axis, axis, np.log10(np.clip(z.T, 1e-6, None)), levels=10, colors="k", linewidths=0.3)
        fig.colorbar(cs, ax=ax, label="log10 loss")
        ax.plot([0], [0], marker="+", color="w", ms=14, mew=2)
        ax.set_xlabel("direction 1 (filter-normalised)")
        ax.set_ylabel("direction 2")
    ax = axes[-1]
    for net, sl in nets:
        s = sl.get("from-init")
        if s:
            ax.plot(s["axis"], s["loss"], color=F.color_of(net), label=F.text(label_of(net)), marker=".")
    ax.set_yscale("log")
    ax.set_xlabel("t: initialisation (0) to trained weights (1)")
    ax.set_ylabel("training loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.subplots_adjust(wspace=0.5)  # room for each colour bar's label beside the next panel
    fig.suptitle(F.text(title), y=1.03)
    return F.to_png(fig)


def slice_hover(groups: dict[str, list[RunRecords]]) -> str:
    """The 2D random slices as inline SVG heat maps whose cells name their point, loss and accuracy on hover
    (an SVG ``<title>`` per cell): readable without any script, so the report stays one offline file.
    Colour: log10 loss on one scale shared by the networks; + marks the trained point."""
    import html

    from matplotlib import colormaps

    slices = [(net, F.run_slices(runs[0]).get("random-2d")) for net, runs in groups.items()]
    slices = [(net, s) for net, s in slices if s and len(s.get("shape", [])) == 2]
    if not slices:
        return "<p>No 2D slice to show.</p>"
    logs = [math.log10(max(v, 1e-6)) for _, s in slices for v in s["loss"] if v is not None and math.isfinite(v)]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    cmap, size, pad = colormaps["viridis"], 260, 28
    parts = []
    for net, s in slices:
        n, axis = s["shape"][0], s["axis"]
        cell = size / n
        out = [
            f'<svg width="{size + pad}" height="{size + pad + 18}" '
            f'role="img" aria-label="{html.escape(label_of(net))}: hover a cell for its loss">',
            f'<F.text x="{pad}" y="13" font-size="12">{html.escape(label_of(net))}</F.text>',
        ]
        for i in range(n):
            for j in range(n):
                v = s["loss"][i * n + j]
                acc = s.get("acc", [None] * (n * n))[i * n + j]
                if v is None or not math.isfinite(v):
                    colour, what = "#cccccc", "not finite"
                else:
                    r, g, b, _ = cmap((math.log10(max(v, 1e-6)) - lo) / ((hi - lo) or 1.0))
                    colour = f"#{int(255 * r):02x}{int(255 * g):02x}{int(255 * b):02x}"
                    what = f"loss {v:.4g}" + (f", accuracy {acc:.3f}" if acc is not None else "")
                x, y = pad + i * cell, 18 + (n - 1 - j) * cell  # direction 1 across, direction 2 up
                out.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell + 0.5:.1f}" height="{cell + 0.5:.1f}" '
                    f'fill="{colour}"><title>({axis[i]:.3g}, {axis[j]:.3g}): {what}</title></rect>'
                )
        mid = pad + size / 2, 18 + size / 2
        out.append(
            f'<F.text x="{mid[0]:.1f}" y="{mid[1] + 5:.1f}" font-size="16" fill="white" F.text-anchor="middle" '
            'pointer-events="none">+</F.text>'
        )
        out.append(
            f'<F.text x="{pad}" y="{size + 32}" font-size="10">{axis[0]:.3g} .. {axis[-1]:.3g} along each '
            f"direction; colour: log10 loss {lo:.2f} (dark) to {hi:.2f} (light)</F.text></svg>"
        )
        parts.append("".join(out))
    return '<div class="hover-slices">' + "".join(parts) + "</div>"
