"""Appendix: l1, l2 and l_inf normalisation against BatchNorm and the standard VGG."""

from __future__ import annotations

import math

from landscape.claims import Claim, diff, final_test_acc, median_probe, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.names import label_of
from landscape.planning import vgg_runs
from landscape.report import figures as F
from landscape.results import RunRecords, beta_eff, med, series

LP = ("l1", "l2", "linf")


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return vgg_runs(preset, ("standard", "bn", *LP), preset["lrs"][:1], seeds, overrides)


def acc_minus_bn(net: str):
    def measure(t):
        return diff(t.per_seed(final_test_acc, "vgg", net), t.per_seed(final_test_acc, "vgg", "bn"))

    return measure


def beta_standard_over(net: str):
    def measure(t):
        metric = median_probe("gradient_sweep", beta_eff)
        return ratio(t.per_seed(metric, "vgg", "standard"), t.per_seed(metric, "vgg", net))

    return measure


def claims(preset: dict) -> list[Claim]:
    out = []
    for net in LP:
        out.append(
            Claim(
                f"appendix.{net}.trains_like_bn",
                f"{net} normalisation trains as well as BN (within 3 points) or better",
                f"test acc ({net}) - test acc (BN)",
                acc_minus_bn(net),
                -0.03,
            )
        )
        out.append(
            Claim(
                f"appendix.{net}.smoother_than_standard",
                f"{net} normalisation smooths the landscape (beta_eff lower than standard)",
                f"median beta_eff, standard / {net}",
                beta_standard_over(net),
                1.0,
                transform="log",
            )
        )
    return out


def figures(t) -> list[Figure]:
    g = t.groups("vgg")
    figs = [
        Figure("Normalisations: train and test curves", F.training_curves, (g, "l_p normalisations")),
        Figure("Normalisations: smoothness along the gradient", F.landscape_panels, (g, "l_p normalisations")),
        Figure("Normalisations: median smoothness over training", summary_bars, (g, "medians over probe steps")),
    ]
    layer = F.middle_layer([r for rs in g.values() for r in rs])
    if layer:
        figs.append(
            Figure(f"Activation distributions of {layer}", F.activation_ridges, (g, layer, f"input of {layer}"))
        )
    return figs


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: the paper's appendix has each l_p normalisation train about as well as BN (final "
            "accuracy) and lower beta_eff, the loss band and the gradient change against the standard network (a dot "
            "per seed, log axis), although its activations are not Gaussian; the line below says which held here."
        ),
        name="norms",
        title="Appendix: l_p normalisations",
        anchor="appendix",
        help="Appendix: l1, l2 and l_inf normalisation against BN and standard.",
        plan=plan,
        claims=claims,
        figures=figures,
    )
)


# ------------------------------------------------------------------ this experiment's own figures


@F.drawing
def summary_bars(groups: dict[str, list[RunRecords]], title: str) -> bytes:
    """Per net: median beta_eff, loss band and max gradient change over probe steps, one dot per seed and a line at
    their geometric mean (dots on a log axis: no bar whose length would depend on where the axis starts)."""
    rows = []
    for net, runs in groups.items():
        for run in runs:
            rows.append(
                (
                    net,
                    *(
                        med(v for _, v in series("gradient_sweep", key)(run))
                        for key in ("loss_band", "grad_change", "beta_eff")
                    ),
                )
            )
    nets_all = list(dict.fromkeys(r[0] for r in rows))
    fig, axes = F.subplots(1, 3, figsize=(3.2 + 1.1 * len(nets_all) * 3, 3.4))
    for ax, i, label in zip(axes, (1, 2, 3), ("loss band", "gradient change", "beta_eff")):
        for x, net in enumerate(nets_all):
            vals = [r[i] for r in rows if r[0] == net and r[i] is not None and r[i] > 0]
            if not vals:
                continue
            offsets = [0.0] if len(vals) == 1 else [-0.15 + 0.3 * k / (len(vals) - 1) for k in range(len(vals))]
            ax.scatter([x + o for o in offsets], vals, color=F.color_of(net), s=28, zorder=3)
            centre = math.exp(sum(math.log(v) for v in vals) / len(vals))
            ax.hlines(centre, x - 0.3, x + 0.3, color="0.15", lw=1.5, zorder=4)
        ax.set_xticks(range(len(nets_all)), [F.text(label_of(n)) for n in nets_all], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(nets_all) - 0.4)
        ax.set_yscale("log")
        ax.set_ylabel(f"median {label} (log)")
    fig.suptitle(F.text(title) + " (one dot per seed, a line at their geometric mean)", y=1.04)
    fig.tight_layout()
    return F.to_png(fig)
