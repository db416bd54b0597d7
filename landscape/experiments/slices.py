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

from landscape.claims import Claim, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.planning import RunSpec, vgg_runs
from landscape.report import figures as F

BASIN_FACTOR = 2.0  # "in the basin": L <= 2 L(trained point)
BUMP = 0.05  # nats: a rise smaller than this along the interpolation counts as monotone
DEFAULTS = {"grid": 11, "range": [-1.0, 1.0], "subset": 512, "batch_size": 256, "bn": "recompute", "bn_batches": 2,
            "interpolate_grid": 11}


def settings(preset: dict) -> dict:
    return {**DEFAULTS, **(preset.get("slices") or {})}


def plan(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    return vgg_runs(preset, ("standard", "bn"), preset["lrs"][:1], seeds, overrides)


def specs(preset: dict):
    from landscape.slicing import SliceSpec

    s = settings(preset)
    common = dict(subset=s["subset"], batch_size=s["batch_size"], bn=s["bn"], bn_batches=s["bn_batches"])
    return {"random-2d": SliceSpec("random", 2, s["grid"], s["range"][0], s["range"][1], **common),
            "from-init": SliceSpec("interpolate", 1, s["interpolate_grid"], 0.0, 1.0, **common)}


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
    out = [Claim("slices.vgg.basin", "BN's trained weights sit in a wider basin (Li et al.'s filter-normalised 2D "
                 "slice)", f"fraction of the grid within {BASIN_FACTOR:g}x the trained point's loss, BN / standard",
                 lambda t: ratio(t.per_seed(basin_fraction, "vgg", "bn"), t.per_seed(basin_fraction, "vgg", "standard")),
                 1.0, transform="log", layers="all weights but biases and BN parameters")]
    for net in ("standard", "bn"):
        out.append(Claim(f"slices.vgg.{net}.monotone", f"{'BN' if net == 'bn' else 'standard'} VGG: the loss falls "
                         "monotonically from the initialisation to the trained weights (Goodfellow et al.)",
                         "largest rise between neighbouring points of the interpolation (nats)",
                         lambda t, n=net: t.per_seed(largest_bump, "vgg", n), BUMP, direction="below",
                         headline=False))
    return out


def figures(t) -> list[Figure]:
    groups = t.groups("vgg")
    if not groups:
        return []
    return [Figure("Loss around the trained weights: 2D filter-normalised random slice (contours; + the trained "
                   "point) and the line from the initialisation (t = 0) to the trained weights (t = 1)",
                   F.slice_panels, (groups, "slices")),
            Figure("The same 2D slices to hover: each cell names its point, loss and accuracy", F.slice_hover,
                   (groups,))]


EXPERIMENT = register(Experiment(
    about=("What to look for: a wide, round basin around the + (BN's, by the paper's account) against a narrow or "
           "skewed one; along the interpolation, a loss that falls without a bump. Slices use BN in eval mode with "
           "running statistics recomputed at each point (landscape slice --bn recompute)."),
    name="slices", title="Beyond the paper: the loss landscape around the trained weights", anchor="slices",
    help="Li et al.'s filter-normalised 2D slices and the interpolation from initialisation, standard vs BN VGG.",
    plan=plan, claims=claims, figures=figures, paper=False, preset_key="slices", after=after))
