"""Beyond the paper: does normalisation smooth a transformer's landscape the way BatchNorm
smooths VGG's?

A small Vision Transformer on CIFAR-10 with each normalisation in every pre-norm slot:
none (the standard network), LayerNorm, RMSNorm, BatchNorm over the token features and
Dynamic Tanh (Zhu et al., 2025), under AdamW (what transformers are trained with) and under
plain SGD at the VGG experiments' learning rates, paired by seed. The probes are Figure 4's
(the loss-variation band, gradient predictiveness and beta_eff along the gradient, with the
paper's eta grid in multiples of the lr), sharpness against the optimizer's threshold (of
``P^-1 H`` for AdamW) and ICS_opti per block.
"""

from __future__ import annotations

import math

from landscape.claims import Claim, diff, final_train_acc, median_probe, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.experiments.smoothness import edge_note
from landscape.names import label_of
from landscape.planning import RunSpec, paired_run
from landscape.report import figures as F
from landscape.results import RunRecords, beta_eff, final_test_acc, max_grad_change

VIT_NETS = ("standard", "ln", "rms", "bn", "dyt")  # model.norm none, layer, rms, batch, dyt
SMOOTH = (
    ("beta_eff", "effective beta-smoothness", beta_eff),
    ("grad_predictiveness", "gradient change along the gradient", max_grad_change),
)
DYT_BAND = 2.0  # "as smooth as LayerNorm": DyT's median beta_eff within a factor 2 of LayerNorm's


def settings(preset: dict) -> list[tuple[str, float]]:
    """(optimizer, lr) pairs: AdamW first, then plain SGD at each lr."""
    s = preset.get("transformer") or {}
    return [("adamw", lr) for lr in s.get("adamw_lrs", [])] + [("sgd", lr) for lr in s.get("sgd_lrs", [])]


def vit_run(preset: dict, net: str, optimizer: str, lr: float, seed: int, overrides=()) -> RunSpec:
    s = preset.get("transformer") or {}
    optim = {"name": optimizer, "weight_decay": s.get("adamw_weight_decay", 0.0) if optimizer == "adamw" else 0.0}
    return paired_run(
        "vit", "vit", net, lr, seed, [s.get("vit", {})], overrides, optim=optim, tag=optimizer, variant=optimizer
    )


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return [
        vit_run(preset, net, opt, lr, s, overrides) for opt, lr in settings(preset) for net in VIT_NETS for s in seeds
    ]


def _setting(opt: str, lr: float, measure):
    def restricted(t):
        return measure(t.only(opt), lr)

    return restricted


def _edge(opt: str, lr: float, net: str):
    """The unnormalised and the normalised ViT's sharpness against the optimizer's threshold (of
    ``P^-1 H`` under AdamW): when both sit at it, a smoothness ratio near 1 is expected."""
    return _setting(opt, lr, lambda t, lr: edge_note("vit", ("standard", net), lr)(t))


def smoother(net: str, metric):
    def measure(t, lr):
        m = median_probe("gradient_sweep", metric)
        return ratio(t.per_seed(m, "vit", "standard", lr), t.per_seed(m, "vit", net, lr))

    return measure


def dyt_vs_ln(t, lr):
    m = median_probe("gradient_sweep", beta_eff)
    r = ratio(t.per_seed(m, "vit", "dyt", lr), t.per_seed(m, "vit", "ln", lr))
    return {s: abs(math.log(v)) if v is not None and v > 0 else None for s, v in r.items()}


def trains_better(net: str):
    def measure(t, lr):
        return diff(t.per_seed(final_train_acc, "vit", net, lr), t.per_seed(final_train_acc, "vit", "standard", lr))

    return measure


def claims(preset: dict) -> list[Claim]:
    out = []
    sets = settings(preset)
    headline = [
        sets[i] for i in range(len(sets)) if i == 0 or sets[i][0] != sets[i - 1][0]
    ]  # AdamW and the first SGD lr
    for opt, lr in sets:
        tag = f"{opt.upper() if opt == 'sgd' else 'AdamW'} lr {lr:g}"
        main = (opt, lr) in headline
        for net in ("ln", "rms"):
            for cid, text, metric in SMOOTH:
                out.append(
                    Claim(
                        f"vit.{opt}{lr:g}.{net}.{cid}",
                        f"ViT, {tag}: {label_of(net)} lowers the {text} (smoother than no normalisation)",
                        "median over probe steps, none / " + label_of(net),
                        _setting(opt, lr, smoother(net, metric)),
                        1.0,
                        transform="log",
                        layers="all parameters",
                        headline=main,
                        note=_edge(opt, lr, net),
                    )
                )
        out.append(
            Claim(
                f"vit.{opt}{lr:g}.dyt_like_ln",
                f"ViT, {tag}: Dynamic Tanh is as smooth as LayerNorm (beta_eff within a factor {DYT_BAND:g})",
                "|log(median beta_eff DyT / LayerNorm)|",
                _setting(opt, lr, dyt_vs_ln),
                math.log(DYT_BAND),
                direction="below",
                headline=main,
            )
        )
        for net in ("ln", "rms", "bn", "dyt"):
            out.append(
                Claim(
                    f"vit.{opt}{lr:g}.{net}.trains_better",
                    f"ViT, {tag}: {label_of(net)} trains better than no normalisation at equal steps",
                    "final train acc (norm) - train acc (none)",
                    _setting(opt, lr, trains_better(net)),
                    0.0,
                    headline=main,
                )
            )
    return out


def figures(t) -> list[Figure]:
    figs, rows = [], []
    for opt, lr, g in t.settings("vit", ("adamw", "sgd")):
        tag = f"{'AdamW' if opt == 'adamw' else 'SGD'} lr {lr:g}"
        rows.append((tag, g))
        figs += [
            Figure(
                f"ViT, {tag}: loss variation, gradient predictiveness, beta_eff and sharpness",
                F.landscape_panels,
                (g, f"ViT, {tag}"),
            ),
            Figure(f"ViT, {tag}: training curves", F.training_curves, (g, f"ViT, {tag}")),
            Figure(f"ViT, {tag}: ICS_opti per block", F.ics_curves, (g, f"ViT, {tag}")),
        ]
    if rows:
        figs.append(Figure("ViT: final test accuracy per normalisation", accuracy_bars, (rows, "final test accuracy")))
    return figs


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: whether each normalisation makes the ViT smoother along the gradient (beta_eff, gradient"
            " change) and train better than no normalisation, under AdamW and under SGD; at an SGD lr where both "
            "networks sit at their edge of stability a ratio near 1 is expected."
        ),
        name="transformer-norms",
        title="Beyond the paper: normalisation in a Vision Transformer",
        anchor="transformer",
        help="Beyond the paper: a small ViT with no norm, LayerNorm, RMSNorm, BatchNorm or Dynamic Tanh, under AdamW "
        "and SGD: Figure 4's probes, sharpness and ICS_opti.",
        plan=plan,
        claims=claims,
        figures=figures,
        paper=False,
        preset_key="transformer",
    )
)


# ------------------------------------------------------------------ this experiment's own figures


def final_accuracies(groups: dict[str, list[RunRecords]]) -> dict[str, list[float]]:
    """Per network, each seed's final test accuracy as the claims count it (a diverged run: 0, once)."""
    return {net: [a for a in (final_test_acc(r) for r in runs) if a is not None] for net, runs in groups.items()}


@F.drawing
def accuracy_bars(rows: list[tuple[str, dict[str, list[RunRecords]]]], title: str) -> bytes:
    """Final test accuracy per network (mean over seeds, each seed a dot), one panel per setting."""
    fig, axes = F.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.2), squeeze=False)
    for ax, (label, groups) in zip(axes[0], rows):
        nets = list(groups)
        accuracies = final_accuracies(groups)
        for i, net in enumerate(nets):
            accs = accuracies[net]
            if accs:
                ax.bar(i, sum(accs) / len(accs), color=F.color_of(net), alpha=0.8)
                ax.scatter([i] * len(accs), accs, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(nets)))
        ax.set_xticklabels([F.text(label_of(n)) for n in nets], rotation=25, fontsize=8)
        ax.set_ylabel("final test accuracy")
        ax.set_title(F.text(label), fontsize=9)
    fig.suptitle(F.text(title), y=1.03)
    fig.tight_layout()
    return F.to_png(fig)
