"""Figure 4: the loss landscape along the gradient, VGG and the deep linear network."""

from __future__ import annotations

from landscape.claims import Claim, median_probe, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.planning import dln_runs, vgg_runs
from landscape.report import figures as F
from landscape.results import beta_eff, loss_band, max_grad_change

SWEEP = (("loss_band", "the loss-variation band is narrower with BN", loss_band),
         ("grad_predictiveness", "the gradient changes less along the gradient with BN", max_grad_change),
         ("beta_eff", "effective beta-smoothness is lower with BN", beta_eff))


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return (vgg_runs(preset, ("standard", "bn"), preset["lrs"][:1], seeds, overrides)
            + dln_runs(preset, ("standard", "bn"), seeds, overrides))


def standard_over_bn(arch: str, metric):
    """Per seed: the median over probe steps of ``metric``, standard / BN."""
    def measure(t):
        return ratio(t.per_seed(metric, arch, "standard"), t.per_seed(metric, arch, "bn"))
    return measure


def sharpness_value(values: dict):
    return values.get("value")


def claims(preset: dict) -> list[Claim]:
    out = []
    for arch in ("vgg", "dln"):
        for cid, text, fn in SWEEP:
            out.append(Claim(f"fig4.{arch}.{cid}", f"{arch.upper()}: {text}", "median over probe steps, standard / BN",
                             standard_over_bn(arch, median_probe("gradient_sweep", fn)), 1.0, transform="log",
                             layers="all parameters (a step along the whole gradient)"))
        out.append(Claim(f"beyond.{arch}.sharpness", f"{arch.upper()}: the top Hessian eigenvalue is lower with BN "
                         "(beyond the paper)", "median sharpness, standard / BN",
                         standard_over_bn(arch, median_probe("sharpness", sharpness_value)), 1.0, transform="log",
                         layers="all parameters (the full Hessian)"))
    return out


def figures(t) -> list[Figure]:
    return [Figure(f"{arch.upper()}: loss variation, gradient predictiveness, beta_eff and sharpness",
                   F.landscape_panels, (t.groups(arch), arch.upper())) for arch in ("vgg", "dln") if t.groups(arch)]


EXPERIMENT = register(Experiment(
    name="smoothness", title="Figure 4: the landscape along the gradient", anchor="fig4",
    help="Figure 4: loss variation, gradient predictiveness, beta_eff and sharpness, VGG and DLN.",
    plan=plan, claims=claims, figures=figures))
