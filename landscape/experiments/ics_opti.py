"""Figure 3: internal covariate shift from the optimisation view (ICS_opti), VGG and the deep linear network."""

from __future__ import annotations

from landscape.claims import Claim, diff, final_train_loss, median_probe, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.planning import dln_runs, vgg_runs
from landscape.report import figures as F
from landscape.results import RunRecords, series

PAPER_LAYERS = {"vgg": (5, 10), "dln": (9, 17)}  # the layers Figure 3 of the paper shows
LAYERS = "every probed layer after the first (its G' = G by definition), mean over layers"


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return vgg_runs(preset, ("standard", "bn"), preset["lrs"][:1], seeds, overrides) + dln_runs(
        preset, ("standard", "bn"), seeds, overrides
    )


def _cos(t, arch, net):
    return t.per_seed(median_probe("ics_opti", "mean_cos"), arch, net)


def vgg_cos_standard_minus_bn(t):
    return diff(_cos(t, "vgg", "standard"), _cos(t, "vgg", "bn"))


def vgg_l2_bn_over_standard(t):
    l2 = median_probe("ics_opti", "mean_l2")
    return ratio(t.per_seed(l2, "vgg", "bn"), t.per_seed(l2, "vgg", "standard"))


def dln_standard_cos(t):
    return _cos(t, "dln", "standard")


def dln_cos_standard_minus_bn(t):
    return diff(_cos(t, "dln", "standard"), _cos(t, "dln", "bn"))


def dln_loss_standard_over_bn(t):
    return ratio(t.per_seed(final_train_loss, "dln", "standard"), t.per_seed(final_train_loss, "dln", "bn"))


def claims(preset: dict) -> list[Claim]:
    return [
        Claim(
            "fig3.vgg_bn_not_less_ics",
            "for VGG, ICS_opti is similar or larger with BN",
            "median cos(G, G') standard - BN (>= -0.05: BN's cosine is not clearly higher)",
            vgg_cos_standard_minus_bn,
            -0.05,
            layers=LAYERS,
        ),
        Claim(  # declared 2026-12-06, before any l2 value was read (docs/calibration.md, claim history)
            "fig3.vgg_bn_not_less_ics_l2",
            "for VGG, ICS_opti is similar or larger with BN (the l2 distance the paper plots beside the cosine)",
            "median ||G - G'||, BN / standard (>= 0.95: BN's distance is not clearly smaller)",
            vgg_l2_bn_over_standard,
            0.95,
            transform="log",
            layers=LAYERS,
        ),
        Claim(
            "fig3.dln_standard_cosine_near_1",
            "the standard DLN's G and G' are almost aligned",
            "median cos(G, G'), standard DLN",
            dln_standard_cos,
            0.9,
            layers=LAYERS,
        ),
        Claim(
            "fig3.dln_bn_less_correlated",
            "the BN DLN's G and G' are much less correlated",
            "median cos(G, G') standard DLN - BN DLN",
            dln_cos_standard_minus_bn,
            0.1,
            layers=LAYERS,
        ),
        Claim(
            "fig3.dln_bn_trains_better",
            "yet the BN DLN trains better",
            "final train loss, standard DLN / BN DLN",
            dln_loss_standard_over_bn,
            1.0,
            transform="log",
        ),
    ]


def figures(t) -> list[Figure]:
    figs = []
    for arch in ("vgg", "dln"):
        g = t.groups(arch)
        if g:
            curves = F.training_curves if arch == "vgg" else F.regression_curves
            figs += [
                Figure(f"{arch.upper()}: ICS_opti per layer and step", F.ics_heatmaps, (g, arch.upper())),
                Figure(f"{arch.upper()}: ICS_opti over training", F.ics_curves, (g, arch.upper())),
            ]
            present, absent = F.numbered([r for rs in g.values() for r in rs], "ics_opti", PAPER_LAYERS[arch])
            if present:
                note = f" (layer {', '.join(map(str, absent))} is beyond this network)" if absent else ""
                figs.append(
                    Figure(
                        f"{arch.upper()}: ICS_opti at the paper's layers "
                        f"{', '.join(str(k) for k in present)}{note}; {F.LAYER_COUNTING}",
                        ics_layer_curves,
                        (g, arch.upper(), present),
                    )
                )
            figs.append(Figure(f"{arch.upper()}: training", curves, (g, arch.upper())))
    return figs


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: cos(G, G') near 1 and a small ||G - G'|| mean a layer's gradient hardly changes when the"
            " layers before it take their step (little ICS in the optimisation sense). The paper says BN's VGG has no "
            "better cosines than the standard one, and that the BN deep linear network's G and G' are almost "
            "uncorrelated while it still trains better. Heatmap rows are layers counted over the weight layers from the"
            " input (1, 2, ...), the same numbering as the paper's figure labels."
        ),
        name="ics-opti",
        title="Figure 3: ICS from the optimisation view (ICS_opti)",
        anchor="fig3",
        help="Figure 3: ICS_opti (l2 and cosine between G and G') for VGG and the deep linear network.",
        plan=plan,
        claims=claims,
        figures=figures,
    )
)


# ------------------------------------------------------------------ this experiment's own figures


@F.drawing
def ics_layer_curves(groups: dict[str, list[RunRecords]], title: str, layers: list[int]) -> bytes:
    """||G - G'|| and cos(G, G') over training for the paper's F.numbered layers, one row per layer,
    each network's layer k found in its own records."""
    fig, axes = F.subplots(len(layers), 2, figsize=(10, 3.0 * len(layers)), squeeze=False)
    for row, k in zip(axes, layers):
        for ax, key, logy in zip(row, ("l2", "cosine"), (True, False)):

            def layer_series(run, key=key, k=k):
                name = F.layer_name(run, "ics_opti", k)
                return [
                    (step, v.get(name))
                    for step, v in series("ics_opti", "ics_l2" if key == "l2" else "ics_cos")(run)
                    if name is not None
                ]

            F.plot_lines(ax, groups, layer_series, logy=logy)
            ax.set_xlabel("step")
            names = sorted({n for runs in groups.values() for n in [F.layer_name(runs[0], "ics_opti", k)] if n})
            ax.set_ylabel(
                ("||G - G'||" if key == "l2" else "cos(G, G')") + f"\nlayer {k} ({F.text(', '.join(names))})",
                fontsize=8,
            )
        row[1].axhline(1.0, color="grey", lw=0.8)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(F.text(title), y=1.01)
    fig.tight_layout()
    return F.to_png(fig)
