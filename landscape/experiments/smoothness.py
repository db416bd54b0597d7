"""Figure 4: the loss landscape along the gradient, VGG and the deep linear network."""

from __future__ import annotations

from landscape.claims import (
    EARLY_SHARE,
    PHASES,
    SCHEDULE_PARTS,
    Claim,
    early_end,
    in_phase,
    keep_steps,
    median_probe,
    on_schedule,
    ratio,
    training_phase,
)
from landscape.experiments import Experiment, Figure, register
from landscape.names import label_of
from landscape.planning import dln_runs, vgg_runs
from landscape.report import figures as F
from landscape.results import beta_eff, loss_band, max_grad_change, med, quantity_of, stability_series

SWEEP = (
    ("loss_band", "the loss-variation band is narrower with BN", loss_band),
    ("grad_predictiveness", "the gradient changes less along the gradient with BN", max_grad_change),
    ("beta_eff", "effective beta-smoothness is lower with BN", beta_eff),
)
# Scale-free companions of the first two (declared before any run recorded them, 0.3.1): each divides
# by what the step's own gradient predicts, so a network on its loss plateau (a tiny gradient: a
# step of eta x lr hardly moves it, and the raw band is narrow however rough the landscape) and a
# smooth landscape no longer read the same. Headline, because they put the paper's question (is the
# landscape smoother?) without the confound that decides the raw measures in early training.
COMPANIONS = (
    (
        "rel_loss_departure",
        "the loss departs less from its first-order prediction along the gradient "
        "with BN (scale-free companion of the loss band)",
        quantity_of("gradient_sweep", "rel_loss_departure"),
    ),
    (
        "rel_grad_change",
        "the gradient changes less relative to its own size along the gradient with BN "
        "(scale-free companion of gradient predictiveness)",
        quantity_of("gradient_sweep", "rel_grad_change"),
    ),
)
EDGE = 0.9  # a network whose median sharpness is at least this share of its threshold sits at its edge of stability
LABELS = {"standard": "standard", "bn": "BN"}  # the VGG/DLN notes say "BN", the report's legend "BatchNorm"
PART_TEXT = {"every": "the every-N probe steps only", "log": "the log-spaced probe steps only"}
PHASE_TEXT = {
    "early": f"early training: the first {EARLY_SHARE:.0%} of steps",
    "later": f"later training: after the first {EARLY_SHARE:.0%} of steps",
}


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return vgg_runs(preset, ("standard", "bn"), preset["lrs"][:1], seeds, overrides) + dln_runs(
        preset, ("standard", "bn"), seeds, overrides
    )


def standard_over_bn(arch: str, metric):
    """Per seed: the median over probe steps of ``metric``, standard / BN."""

    def measure(t):
        return ratio(t.per_seed(metric, arch, "standard"), t.per_seed(metric, arch, "bn"))

    return measure


def edge_note(arch: str, nets: tuple[str, str] = ("standard", "bn"), lr: float | None = None):
    """Where both networks sit at their stability threshold, say that a ratio near 1 is expected."""

    def note(t) -> str | None:
        share = {
            net: med(med(v for _, v in stability_series("over_threshold")(run)) for _, run in t.select(arch, net, lr))
            for net in nets
        }
        if None in share.values():
            return None
        at = "median sharpness / threshold: " + ", ".join(f"{LABELS.get(n, label_of(n))} {share[n]:.2f}" for n in nets)
        if min(share.values()) >= EDGE:
            return (
                f"both networks sit at their stability threshold ({at}): at the edge of stability a ratio near 1 "
                "is expected and is not evidence against the paper"
            )
        return at

    return note


def grad_norm_note(arch: str, phase: str, nets: tuple[str, str] = ("standard", "bn")):
    """The gradient's size in a phase (median over seeds of each run's median ``grad_norm`` at
    the phase's probe steps): a step of eta x lr along a tiny gradient changes little, which is
    what the standard VGG's early steps are (README: Figure 4, early training)."""

    def note(t) -> str | None:
        t = keep_steps(t, lambda config: training_phase(config, phase))
        size = {
            net: med(median_probe("gradient_sweep", "grad_norm")(run) for _, run in t.select(arch, net)) for net in nets
        }
        if None in size.values():
            return None
        return "median gradient norm at these steps: " + ", ".join(
            f"{LABELS.get(n, label_of(n))} {size[n]:.3g}" for n in nets
        )

    return note


def claims(preset: dict) -> list[Claim]:
    """Figure 4's claims. For VGG each measure is judged in two phases of training, early (the
    first tenth of steps, where the paper says BN's effects are largest) and later (the rest):
    over all probe steps the two phases point opposite ways (the standard VGG's initial loss
    plateau, README), so a median over both measures the schedule's mix, not the landscape. The
    all-steps claims (declared first) and each part of the mixed schedule stay as diagnostics."""
    out = []
    for arch in ("vgg", "dln"):
        for cid, text, fn in SWEEP:
            measure = standard_over_bn(arch, median_probe("gradient_sweep", fn))
            if arch == "vgg":
                for phase in PHASES:
                    out.append(
                        Claim(
                            f"fig4.vgg.{cid}.{phase}",
                            f"VGG: {text} ({PHASE_TEXT[phase]})",
                            "median over those probe steps, standard / BN",
                            in_phase(phase, measure),
                            1.0,
                            transform="log",
                            layers="all parameters (a step along the whole gradient)",
                            note=grad_norm_note("vgg", phase),
                            statement="smoother",
                        )
                    )
            out.append(
                Claim(
                    f"fig4.{arch}.{cid}",
                    f"{arch.upper()}: {text}" + (" (all probe steps)" if arch == "vgg" else ""),
                    "median over probe steps, standard / BN",
                    measure,
                    1.0,
                    transform="log",
                    layers="all parameters (a step along the whole gradient)",
                    headline=arch != "vgg",
                )
            )
        out.append(
            Claim(
                f"beyond.{arch}.sharpness",
                f"{arch.upper()}: the top Hessian eigenvalue is lower with BN (beyond the paper)",
                "median sharpness, standard / BN",
                standard_over_bn(arch, median_probe("sharpness", "sharpness")),
                1.0,
                transform="log",
                layers="all parameters (the full Hessian)",
                note=edge_note(arch),
                statement="sharpness" if arch == "vgg" else None,
            )
        )
    for cid, text, fn in COMPANIONS:
        for phase in PHASES:
            out.append(
                Claim(
                    f"fig4.vgg.{cid}.{phase}",
                    f"VGG: {text} ({PHASE_TEXT[phase]})",
                    "median over those probe steps, standard / BN",
                    in_phase(phase, standard_over_bn("vgg", median_probe("gradient_sweep", fn))),
                    1.0,
                    transform="log",
                    layers="all parameters (a step along the whole gradient)",
                    note=grad_norm_note("vgg", phase),
                    statement="smoother",
                )
            )
    # What the probe schedule does to the VGG claims: each part of a mixed schedule alone.
    for part in SCHEDULE_PARTS:
        for cid, text, fn in SWEEP:
            out.append(
                Claim(
                    f"fig4.vgg.{cid}.{part}_steps",
                    f"VGG: {text} ({PART_TEXT[part]})",
                    "median over those probe steps, standard / BN",
                    on_schedule(part, standard_over_bn("vgg", median_probe("gradient_sweep", fn))),
                    1.0,
                    transform="log",
                    layers="all parameters",
                    headline=False,
                )
            )
    return out


def early_phase_end(t, arch: str) -> float | None:
    """The last step of the claims' early phase for ``arch``'s runs (None if their length is unknown)."""
    ends = {early_end(run.config) for _, run in t.select(arch)}
    return ends.pop() if len(ends) == 1 else None


def figures(t) -> list[Figure]:
    out = []
    for arch in ("vgg", "dln"):
        if t.groups(arch):
            phase_at = early_phase_end(t, arch) if arch == "vgg" else None  # the VGG claims are judged per phase
            out.append(
                Figure(
                    f"{arch.upper()}: loss variation, gradient predictiveness, beta_eff and sharpness",
                    F.landscape_panels,
                    (t.groups(arch), arch.upper(), phase_at),
                )
            )
    return out


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: along the gradient, a narrower loss band, a smaller gradient change and a lower beta_eff"
            " mean a smoother landscape; the paper says BN has all three, especially early in training. The VGG panels "
            "use a log step axis with the end of the claims' early phase dotted: look at each phase separately, since "
            "the standard network's first steps sit on its loss plateau with a tiny gradient. Sharpness is drawn "
            "against the optimizer's stability threshold (dashed): a network at the threshold is at its edge of "
            "stability, where sharpness is set by the step size."
        ),
        name="smoothness",
        title="Figure 4: the landscape along the gradient",
        anchor="fig4",
        help="Figure 4: loss variation, gradient predictiveness, beta_eff and sharpness, VGG and DLN.",
        plan=plan,
        claims=claims,
        figures=figures,
    )
)
