"""Appendix: l1, l2 and l_inf normalisation against BatchNorm and the standard VGG."""

from __future__ import annotations

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
            "What to look for: each l_p normalisation should train about as well as BN (final accuracy) and lower "
            "beta_eff, the loss band and the gradient change against the standard network (bars on a log scale), "
            "although its activations are not Gaussian."
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
    """Per net: median beta_eff, loss band and max gradient change over probe steps (log scale)."""
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
    fig, axes = F.subplots(1, 3, figsize=(12, 3))
    for ax, i, label in zip(axes, (1, 2, 3), ("loss band", "gradient change", "beta_eff")):
        nets = [r[0] for r in rows if r[i] is not None]
        vals = [r[i] for r in rows if r[i] is not None]
        if vals:
            F.sns.barplot(
                x=[label_of(n) for n in nets],
                y=vals,
                ax=ax,
                hue=[label_of(n) for n in nets],
                palette=[F.color_of(n) for n in dict.fromkeys(nets)],
                legend=False,
            )
            ax.set_yscale("log")
        ax.set_ylabel(f"median {label}")
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title, y=1.04)
    return F.to_png(fig)
