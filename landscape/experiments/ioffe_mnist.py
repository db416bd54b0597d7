"""Ioffe and Szegedy (2015), Figure 1, at its own scale: the MNIST experiment where the internal-covariate-shift
story began, with Santurkar et al.'s twist (noise injected after BN) and their probes on the same runs.

The protocol (Ioffe and Szegedy, Section 4.1): a fully connected network, 28x28 inputs, 3 hidden layers of 100
sigmoid units, each ``y = g(Wu + b)``, weights "initialised to small random Gaussian values", a 10-way softmax
with cross-entropy, 50,000 steps of 60 examples; BatchNorm added before each sigmoid. What the paper does not
state and we chose (docs/experiments.md): plain SGD at lr 0.01 for every network (the rate a secondary account
gives; no tuning), Gaussian weights of variance 1/fan-in (``lecun_normal``), zero biases, inputs normalised by
the training set's pixel mean and std, the test accuracy on all 10,000 test images. Figure 1(b, c) shows "a
typical sigmoid" of the last hidden layer: we draw unit 0 (fixed before any run) and judge the claims on the
median over all 100 units.
"""

from __future__ import annotations

import math
from statistics import median

from landscape.claims import Claim, diff, median_probe, ratio
from landscape.experiments import Experiment, Figure, register
from landscape.planning import paired_run
from landscape.report import figures as F
from landscape.results import RunRecords, finite, probe_views, series

NETS = ("standard", "bn", "noisy_bn")
LR = 0.01
EARLY = 0.2  # "sooner": the test accuracy after the first fifth of training (10,000 of 50,000 steps)
LEVELS = ("0.15", "0.5", "0.85")  # Figure 1(b, c)'s percentiles
UNIT = 0  # the "typical sigmoid" drawn (all units are judged)


def plan(preset: dict, seeds: list[int], overrides: list[dict]):
    section = preset.get("ioffe", {})
    lr = float(section.get("lr", LR))
    return [paired_run("ioffe", "mlp", net, lr, s, [section.get("run", {})], overrides) for net in NETS for s in seeds]


def _steps(run: RunRecords) -> int | None:
    try:
        return int(run.config["steps"])
    except (KeyError, TypeError, ValueError):
        return None


def test_acc_at(share: float):
    """A run's test accuracy at its last evaluation within the first ``share`` of training (a diverged run: 0)."""

    def metric(run: RunRecords) -> float | None:
        total = _steps(run)
        if run.state == "diverged":
            return 0.0
        if total is None:
            return None
        recs = [r for r in run.kind("test") if r.get("step", math.inf) <= share * total]
        vals = finite([recs[-1].get("acc")]) if recs else []
        return vals[0] if vals else None

    metric.__name__ = f"test_acc_at_{share:g}"
    return metric


def train_acc_at(share: float):
    """The mean train accuracy of the train records within the last tenth before ``share`` of training."""

    def metric(run: RunRecords) -> float | None:
        total = _steps(run)
        if run.state == "diverged":
            return 0.0
        if total is None:
            return None
        lo, hi = (share - 0.1 * share) * total, share * total
        vals = finite([r.get("acc") for r in run.kind("train") if lo < r.get("step", -1) <= hi])
        return sum(vals) / len(vals) if vals else None

    metric.__name__ = f"train_acc_at_{share:g}"
    return metric


def final_test_acc_of(run: RunRecords) -> float | None:
    return test_acc_at(1.0)(run)


def last_hidden(run: RunRecords) -> str | None:
    """The last hidden layer's sigmoid, whose input Figure 1(b, c) follows: the last layer with per-unit
    percentiles in the run's records."""
    for _, units in reversed(probe_views(run, "activation_stats", "units")):
        return list(units)[-1] if units else None
    return None


def unit_paths(run: RunRecords) -> list[tuple[int, dict[str, list]]]:
    """``[(step, {level: [per unit]})]`` of the last hidden sigmoid's input."""
    layer = last_hidden(run)
    return [(step, units[layer]) for step, units in probe_views(run, "activation_stats", "units") if layer in units]


def drift(run: RunRecords) -> float | None:
    """How far the last hidden layer's sigmoid inputs moved over training, per unit: the sum over the 15th, 50th and
    85th percentiles of |q(end) - q(first probe)|, over the unit's 15-85 spread at the end (scale-free); the median
    over units. A diverged run: infinitely far."""
    if run.state == "diverged":
        return math.inf
    path = unit_paths(run)
    if len(path) < 2:
        return None
    (_, first), (_, last) = path[0], path[-1]
    out = []
    for u in range(len(last[LEVELS[0]])):
        try:
            moved = sum(abs(last[q][u] - first[q][u]) for q in LEVELS)
            spread = last["0.85"][u] - last["0.15"][u]
        except (KeyError, IndexError, TypeError):
            return None
        if spread > 0:
            out.append(moved / spread)
    return median(out) if out else None


def _per(t, metric, net):
    return t.per_seed(metric, "mlp", net)


def bn_minus_standard_early(t):
    return diff(_per(t, test_acc_at(EARLY), "bn"), _per(t, test_acc_at(EARLY), "standard"))


def bn_minus_standard_final(t):
    return diff(_per(t, final_test_acc_of, "bn"), _per(t, final_test_acc_of, "standard"))


def drift_standard_over_bn(t):
    return ratio(_per(t, drift, "standard"), _per(t, drift, "bn"))


def drift_noisy_over_bn(t):
    return ratio(_per(t, drift, "noisy_bn"), _per(t, drift, "bn"))


def noisy_minus_standard_early(t):
    return diff(_per(t, train_acc_at(EARLY), "noisy_bn"), _per(t, train_acc_at(EARLY), "standard"))


def _median_ratio(probe: str, key: str, num: str, den: str):
    def measure(t):
        return ratio(_per(t, median_probe(probe, key), num), _per(t, median_probe(probe, key), den))

    measure.__name__ = f"{key}_{num}_over_{den}"
    return measure


def claims(preset: dict) -> list[Claim]:
    unit_layers = "the last hidden layer's sigmoid inputs, median over its units"
    return [
        Claim(
            "ioffe.bn_higher_sooner",
            "with BN the network reaches a higher test accuracy sooner (Ioffe and Szegedy, Figure 1a)",
            "test acc after the first fifth of training, BN - standard",
            bn_minus_standard_early,
            0.0,
        ),
        Claim(
            "ioffe.bn_higher_at_end",
            "and ends higher (Figure 1a)",
            "final test acc, BN - standard",
            bn_minus_standard_final,
            0.0,
        ),
        Claim(
            "ioffe.bn_inputs_stable",
            "with BN the distribution of a sigmoid's input is much more stable (Figure 1b, c)",
            "drift of the 15th/50th/85th percentiles over training (relative to their final spread), standard / BN",
            drift_standard_over_bn,
            1.0,
            transform="log",
            layers=unit_layers,
        ),
        Claim(
            "ioffe.noisy_bn_shifts",
            "Santurkar et al.'s twist: noise injected after BN makes the sigmoid inputs unstable again",
            "the same drift, noisy BN / BN",
            drift_noisy_over_bn,
            1.0,
            transform="log",
            layers=unit_layers,
        ),
        Claim(
            "ioffe.noisy_bn_still_faster",
            "yet noisy BN still trains faster than the standard network",
            "train acc over the last tenth of the first fifth of training, noisy BN - standard (train accuracy: "
            "noisy BN's noise is off at evaluation)",
            noisy_minus_standard_early,
            0.0,
        ),
        Claim(
            "ioffe.bn_smaller_loss_band",
            "the Santurkar probe on the same runs: BN's loss varies less along the gradient",
            "median loss band over probe steps, standard / BN",
            _median_ratio("gradient_sweep", "loss_band", "standard", "bn"),
            1.0,
            transform="log",
            headline=False,
        ),
        Claim(
            "ioffe.bn_smaller_beta_eff",
            "and its gradients are more predictive (smaller effective beta-smoothness)",
            "median beta_eff over probe steps, standard / BN",
            _median_ratio("gradient_sweep", "beta_eff", "standard", "bn"),
            1.0,
            transform="log",
            headline=False,
        ),
    ]


def figures(t) -> list[Figure]:
    g = t.groups("mlp")
    if not g:
        return []
    return [
        Figure("Figure 1(a): test accuracy over training", test_accuracy, (g,)),
        Figure(
            f"Figure 1(b, c): the 15th, 50th and 85th percentiles of a last-hidden-layer sigmoid's input (unit {UNIT})",
            percentile_panels,
            (g, UNIT),
        ),
        Figure(
            "Santurkar et al.'s probes on the same runs: loss band and beta_eff along the gradient", probe_lines, (g,)
        ),
    ]


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: where the internal-covariate-shift story began. Ioffe and Szegedy trained this "
            "small sigmoid network on MNIST with and without BatchNorm and showed (a) faster, higher test "
            "accuracy with BN and (b, c) that a sigmoid's input distribution, summarised by its 15th, 50th and "
            "85th percentiles, wanders during training without BN and stays put with it; they concluded that BN "
            "helps by reducing this shift. Santurkar et al.'s twist runs the same network with noise injected "
            "after BN, which makes the distributions wander again: if the network still trains faster than the "
            "standard one, stable distributions were not why BN helps. The last panel measures the landscape on "
            "the same runs."
        ),
        name="ioffe-mnist",
        title="Ioffe and Szegedy's MNIST experiment (2015, Figure 1), with noisy BN",
        anchor="ioffe-mnist",
        help=(
            "Ioffe & Szegedy 2015 Figure 1 at full scale: a 3x100 sigmoid MLP on MNIST, 50,000 steps, with and "
            "without BN and with noisy BN (needs MNIST: --data-dir holding MNIST/raw/)."
        ),
        plan=plan,
        claims=claims,
        figures=figures,
        paper=False,
        preset_key="ioffe",
    )
)


# ------------------------------------------------------------------ this experiment's own figures


def test_acc_series(run: RunRecords) -> list[tuple[int, float]]:
    return [(r["step"], r["acc"]) for r in run.kind("test") if r.get("acc") is not None]


@F.drawing
def test_accuracy(groups: dict[str, list[RunRecords]]) -> bytes:
    fig, ax = F.subplots(1, 1, figsize=(5.2, 3.6))
    F.plot_lines(ax, groups, test_acc_series)
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    return F.to_png(fig)


@F.drawing
def percentile_panels(groups: dict[str, list[RunRecords]], unit: int) -> bytes:
    """One panel per network, as the original's (b) and (c): the three percentiles of one unit's input over
    training, first seed drawn (the claims use every seed and every unit)."""
    nets = [n for n, runs in groups.items() if runs]
    fig, axes = F.subplots(1, len(nets), figsize=(3.6 * len(nets) + 0.4, 3.3), squeeze=False)
    lows, highs = [], []
    for ax, net in zip(axes[0], nets):
        run = groups[net][0]
        path = unit_paths(run)
        steps = [s for s, _ in path]
        for level, style in zip(LEVELS, (":", "-", ":")):
            ys = [u[level][unit] if unit < len(u[level]) else None for _, u in path]
            pts = [(s, y) for s, y in zip(steps, ys) if y is not None]
            if pts:
                ax.plot(*zip(*pts), color=F.color_of(net), ls=style, label=f"{float(level):.0%}")
                lows.append(min(y for _, y in pts))
                highs.append(max(y for _, y in pts))
        ax.set_title(F.text(f"{F.label_of(net)} ({run.name})"), fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if lows:
        for ax in axes[0]:
            ax.set_ylim(min(lows) - 0.05 * (max(highs) - min(lows)), max(highs) + 0.05 * (max(highs) - min(lows)))
    axes[0][0].set_ylabel(f"input of the last sigmoid layer, unit {unit}")
    return F.to_png(fig)


@F.drawing
def probe_lines(groups: dict[str, list[RunRecords]]) -> bytes:
    fig, axes = F.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, (key, label) in zip(axes, (("loss_band", "loss band (log)"), ("beta_eff", "beta_eff (log)"))):
        F.plot_lines(ax, groups, series("gradient_sweep", key), logy=True)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    return F.to_png(fig)
