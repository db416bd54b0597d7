"""The deep linear network's regime: why the paper's Figure 3 and Figure 4 pull its DLN two ways.

The appendix fixes full-batch gradient descent at lr 1e-6 on 1,000 samples with the loss
``||W_1 ... W_k x - A x||^2``. Written for a data matrix, that norm sums over samples, and
with a sum the gradient and the Hessian grow with the number of samples n: what decides
stability is the sharpness of the summed loss against 2/lr, i.e. n times the per-sample
curvature. The same network at 100 samples, or with the loss averaged over samples, takes
10x or 1,000x smaller effective steps. This experiment trains both DLNs in each regime the
preset lists (``dln_regimes``: sample counts x sum/mean) and judges the paper's DLN claims
of Figure 3 and Figure 4 in each, beside the sharpness of each network against 2/lr. Its
claims are diagnostics: the headline DLN claims use the preset's own regime (the paper's).
"""

from __future__ import annotations

from landscape.claims import Claim, in_variant, median_probe
from landscape.experiments import Experiment, Figure, ics_opti, register, smoothness
from landscape.planning import dln_run, regime_name
from landscape.report import figures as F
from landscape.results import RunRecords, beta_eff, max_grad_change, series


def regimes(preset: dict) -> list[tuple[int, str]]:
    """The (samples, loss) pairs of the preset's ``dln_regimes``, the preset's own regime first."""
    spec = preset.get("dln_regimes") or {}
    samples, losses = spec.get("samples", []), spec.get("losses", [])
    return [(n, loss) for n in samples for loss in losses]


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return [
        dln_run(preset, net, s, overrides, samples=n, loss=loss)
        for n, loss in regimes(preset)
        for net in ("standard", "bn")
        for s in seeds
    ]


def below_threshold(net: str):
    def measure(t):
        return t.per_seed(median_probe("sharpness", "over_threshold"), "dln", net)

    return measure


def claims(preset: dict) -> list[Claim]:
    out = []
    for n, loss in regimes(preset):
        r = regime_name(n, loss)
        per_regime = [
            (
                "standard_stable",
                "the standard DLN trains below its stability threshold",
                "median sharpness / (2/lr), standard DLN",
                below_threshold("standard"),
                1.0,
                "below",
                "log",
            ),
            (
                "bn_stable",
                "the BN DLN trains below its stability threshold",
                "median sharpness / (2/lr), BN DLN",
                below_threshold("bn"),
                1.0,
                "below",
                "log",
            ),
            (
                "fig3_standard_aligned",
                "Figure 3: the standard DLN's G and G' are almost aligned",
                "median cos(G, G'), standard DLN",
                ics_opti.dln_standard_cos,
                0.9,
                "above",
                "none",
            ),
            (
                "fig3_bn_less_correlated",
                "Figure 3: the BN DLN's G and G' are much less correlated",
                "median cos(G, G') standard - BN",
                ics_opti.dln_cos_standard_minus_bn,
                0.1,
                "above",
                "none",
            ),
            (
                "fig3_bn_trains_better",
                "Figure 3: the BN DLN trains better",
                "final train loss, standard / BN",
                ics_opti.dln_loss_standard_over_bn,
                1.0,
                "above",
                "log",
            ),
            (
                "fig4_grad_predictiveness",
                "Figure 4: the gradient changes less along the gradient with BN",
                "median max gradient change, standard / BN",
                smoothness.standard_over_bn("dln", median_probe("gradient_sweep", max_grad_change)),
                1.0,
                "above",
                "log",
            ),
            (
                "fig4_beta_eff",
                "Figure 4: effective beta-smoothness is lower with BN",
                "median beta_eff, standard / BN",
                smoothness.standard_over_bn("dln", median_probe("gradient_sweep", beta_eff)),
                1.0,
                "above",
                "log",
            ),
        ]
        for cid, text, quantity, measure, threshold, direction, transform in per_regime:
            out.append(
                Claim(
                    f"dln_regime.{r}.{cid}",
                    f"{r}: {text}",
                    quantity,
                    in_variant(r, measure),
                    threshold,
                    direction,
                    transform,
                    layers="every probed layer after the first" if "fig3_bn_less" in cid or "aligned" in cid else "",
                    headline=False,
                )
            )
    return out


def figures(t) -> list[Figure]:
    rows = [(r, t.only(r).groups("dln")) for r in t.variants()]
    rows = [(r, g) for r, g in rows if g]
    if not rows:
        return []
    return [
        Figure(
            "The DLN in each regime: sharpness against 2/lr, cos(G, G'), beta_eff and train loss",
            regime_panels,
            (rows, "deep linear network: regimes (samples, loss summed or averaged)"),
        )
    ]


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: the deep linear network in each regime (samples, loss summed or averaged). Sharpness / "
            "threshold at 1 means the network trains at its edge of stability; there its updates overshoot along the "
            "top eigendirection and cos(G, G') can fall to -1 without any covariate shift. Which network sits at its "
            "edge decides which of the paper's DLN claims hold in that regime."
        ),
        name="dln-regimes",
        title="The deep linear network in other regimes (sample count, loss summed or averaged)",
        anchor="dln-regimes",
        help=(
            "The DLN of Figures 3-4 at several sample counts, loss summed or averaged: stability and the paper's "
            "claims."
        ),
        plan=plan,
        claims=claims,
        figures=figures,
        preset_key="dln_regimes",
    )
)


# ------------------------------------------------------------------ this experiment's own figures


@F.drawing
def regime_panels(regimes: list[tuple[str, dict[str, list[RunRecords]]]], title: str) -> bytes:
    """One row per regime: sharpness / stability threshold, cos(G, G') (mean over layers after
    the first), beta_eff and the train loss, over steps, per network."""
    panels = (
        ("sharpness / threshold", series("sharpness", "over_threshold"), True),
        ("cos(G, G')", series("ics_opti", "mean_cos"), False),
        ("beta_eff", series("gradient_sweep", "beta_eff"), True),
        ("train loss", F.metric_series("train", "loss"), True),
    )
    return F.to_png(F.row_panels(regimes, panels, title, ones=(0, 1)))
