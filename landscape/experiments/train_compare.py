"""Figure 1: VGG with and without BatchNorm at two learning rates."""

from __future__ import annotations

from landscape.claims import Claim, diff, final_test_acc
from landscape.experiments import Experiment, Figure, register
from landscape.planning import vgg_runs
from landscape.report import figures as F

PAPER_LAYERS = (3, 11)  # the layers Figure 1 of the paper shows


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    return vgg_runs(preset, ("standard", "bn"), preset["lrs"], seeds, overrides)


def claims(preset: dict) -> list[Claim]:
    def bn_minus_standard(lr):
        def measure(t):
            return diff(t.per_seed(final_test_acc, "vgg", "bn", lr), t.per_seed(final_test_acc, "vgg", "standard", lr))

        return measure

    return [
        Claim(
            f"fig1.bn_trains_better.lr{lr:g}",
            f"BN reaches a higher test accuracy than the standard VGG at lr {lr:g}",
            "test acc (BN) - test acc (standard), paired by seed",
            bn_minus_standard(lr),
            0.0,
        )
        for lr in preset["lrs"]
    ]


def figures(t) -> list[Figure]:
    lrs = t.lrs("vgg")
    figs = [
        Figure(f"VGG, lr {lr:g}: train and test curves", F.training_curves, (t.groups("vgg", lr), f"lr {lr:g}"))
        for lr in lrs
    ]
    if lrs:
        g = t.groups("vgg", lrs[0])
        runs = [r for rs in g.values() for r in rs]
        present, absent = F.numbered(runs, "activation_stats", PAPER_LAYERS)
        for k in present:
            figs.append(
                Figure(
                    f"Activation distributions of layer {k} over training (lr {lrs[0]:g}); {F.LAYER_COUNTING}",
                    F.activation_ridges,
                    (g, k, f"input of layer {k}"),
                )
            )
        if absent or not present:
            layer = F.middle_layer(runs)
            if layer:
                missing = (
                    f"layer {', '.join(map(str, absent))} of the paper's figure is beyond this network; "
                    if absent
                    else ""
                )
                figs.append(
                    Figure(
                        f"Activation distributions of {layer} over training (lr {lrs[0]:g}); {missing}"
                        "the middle probed layer",
                        F.activation_ridges,
                        (g, layer, f"input of {layer}"),
                    )
                )
    return figs


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: in the paper, with BatchNorm the training loss falls sooner and the test accuracy ends "
            "higher, at lr 0.1 and more so at lr 0.5, where the standard network may never leave the initial loss "
            "plateau (ln 10 for "
            "ten classes) or diverge (a dotted line marks where). The activation panels stack the histogram of one "
            "layer's input at each probe step: the paper's point is that they look only slightly different with and "
            "without BN."
        ),
        name="train-compare",
        title="Figure 1: training with and without BatchNorm",
        anchor="fig1",
        help="Figure 1: VGG standard vs BN at lr 0.1 and 0.5 (training curves, activation distributions).",
        plan=plan,
        claims=claims,
        figures=figures,
    )
)
