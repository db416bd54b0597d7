"""Beyond the paper: is Figure 4's early-phase reversal a width effect?

At the quick protocol (VGG-11 at width 0.25, lr 0.1, 1,000 steps) BN's landscape is smoother along
the gradient after the first tenth of training and rougher before it, where the standard network
sits on its ln 10 plateau with a gradient about 20x smaller than BN's. The paper trained
full-width networks. This pilot trains the standard and BN VGG-11 of the quick protocol at each
width of the preset (the paper's is 1.0) and judges, per width and per phase, Figure 4's three
claims and their two scale-free companions (:data:`landscape.experiments.smoothness.COMPANIONS`).

Declared here before any of its runs existed (commit order shows it):

- per width and phase, standard / BN above 1 for the loss band, the largest gradient change,
  beta_eff, the loss's relative departure from its first-order prediction and the relative
  gradient change (medians over the phase's probe steps, one-sided paired tests as everywhere);
- headline at the paper's width (1.0), diagnostics at the others;
- each claim's note gives the step each network left its plateau and the median gradient norm in
  the phase: the facts that tell a plateau from a rough landscape.

The width at the preset's own VGG width is the smoothness experiment's run itself (trained once).
"""

from __future__ import annotations

import dataclasses

from landscape.claims import PHASES, Claim, in_phase, median_probe
from landscape.experiments import Experiment, Figure, register
from landscape.experiments.smoothness import COMPANIONS, PHASE_TEXT, SWEEP, grad_norm_note, standard_over_bn
from landscape.planning import WIDTH_LR, RunSpec, paired_run, vgg_run
from landscape.report import figures as F
from landscape.results import med

PAPER_WIDTH = 1.0
DEFAULTS = {"widths": [0.25, 0.5, 1.0], "lr": WIDTH_LR, "vgg": {}}


def settings(preset: dict) -> dict:
    return {**DEFAULTS, **(preset.get("width") or {})}


def variant(width: float) -> str:
    return f"w{width:g}"


def base_width(preset: dict) -> float:
    return float(((preset.get("vgg", {}).get("model") or {}).get("vgg") or {}).get("width", 1.0))


def width_run(preset: dict, net: str, width: float, seed: int, overrides=()) -> RunSpec:
    s = settings(preset)
    if width == base_width(preset):  # the smoothness experiment's own run
        return dataclasses.replace(vgg_run(preset, net, s["lr"], seed, overrides), variant=variant(width))
    return paired_run(
        "width-vgg",
        "vgg",
        net,
        s["lr"],
        seed,
        [preset.get("vgg", {}), s["vgg"], {"model": {"vgg": {"width": width}}}],
        overrides,
        tag=variant(width),
        variant=variant(width),
    )


def plan(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    return [
        width_run(preset, net, float(w), s, overrides)
        for w in settings(preset)["widths"]
        for net in ("standard", "bn")
        for s in seeds
    ]


def left_plateau(run) -> float | None:
    """The step a run's train loss first fell below ln(classes) - 0.1 (its status records it), or None."""
    step = run.status.get("left_plateau_step")
    return float(step) if isinstance(step, int) and not isinstance(step, bool) else None


def plateau_note(phase: str):
    grad = grad_norm_note("vgg", phase)

    def note(t) -> str | None:
        left = {net: med(left_plateau(run) for _, run in t.select("vgg", net)) for net in ("standard", "bn")}
        text = "left the plateau at step: " + ", ".join(
            f"{'BN' if n == 'bn' else 'standard'} {'never' if v is None else f'{v:.0f}'}" for n, v in left.items()
        )
        g = grad(t)
        return f"{text}; {g}" if g else text

    return note


def claims(preset: dict) -> list[Claim]:
    out = []
    for w in settings(preset)["widths"]:
        v = variant(float(w))
        for cid, text, fn in (*SWEEP, *COMPANIONS):
            for phase in PHASES:
                measure = in_phase(phase, standard_over_bn("vgg", median_probe("gradient_sweep", fn)))
                out.append(
                    Claim(
                        f"width.{v}.{cid}.{phase}",
                        f"VGG-11 at width {float(w):g}: {text} ({PHASE_TEXT[phase]})",
                        "median over those probe steps, standard / BN",
                        lambda t, m=measure, v=v: m(t.only(v)),
                        1.0,
                        transform="log",
                        layers="all parameters (a step along the whole gradient)",
                        headline=float(w) == PAPER_WIDTH,
                        note=lambda t, n=plateau_note(phase), v=v: n(t.only(v)),
                        statement="smoother",
                    )
                )
    return out


def figures(t) -> list[Figure]:
    from landscape.experiments.smoothness import early_phase_end

    out = []
    for v in t.variants():
        sub = t.only(v)
        if sub.groups("vgg"):
            out.append(
                Figure(
                    f"VGG-11 at width {v[1:]}: loss variation, gradient predictiveness, beta_eff",
                    F.landscape_panels,
                    (sub.groups("vgg"), f"width {v[1:]}", early_phase_end(sub, "vgg")),
                )
            )
    return out


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: whether BN's early-phase roughness along the gradient (standard / BN below 1 before "
            "the dotted line) persists at the paper's width, and whether the scale-free companions (the loss's "
            "departure from its first-order prediction, the gradient change relative to the gradient) agree with "
            "the raw measures. The notes give when each network left the ln 10 plateau and its gradient norm."
        ),
        name="width",
        title="Beyond the paper: Figure 4 across widths",
        anchor="width",
        help="Beyond the paper: the quick protocol's standard and BN VGG-11 at widths 0.25, 0.5 and 1.0 (the paper's): "
        "Figure 4 per phase and its scale-free companions.",
        plan=plan,
        claims=claims,
        figures=figures,
        paper=False,
        preset_key="width",
    )
)
