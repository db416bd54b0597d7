"""Beyond the paper: where the paper's answer holds and where it breaks, across depth and residual connections.

VGG at depths 11/13/16/19 and the CIFAR ResNets (He et al. 2016, widths 16-32-64) at the preset's
depths, each with and without BatchNorm (the unnormalised ResNet with Fixup initialisation, Zhang
et al. 2019, so that it trains), trained briefly with plain SGD. Probed at step 1 (the
initialisation: probes run before the first update) and at the last step: the top Hessian
eigenvalue, its trace (Hutch++), the gradient norm per layer, and Figure 4's sweep.

Claims, declared here before any run of this experiment existed (commit order shows it), from the
two critiques' own statements and from the paper's:

- PyHessian (Yao et al. 2020): "Batch Normalization does not necessarily make the loss landscape
  smoother, especially for shallower networks ... the smoother landscape only becomes evident for
  deep networks" (ResNet-20/32/38/56 on CIFAR-10, trained to the end). Here: after the short run,
  no-BN / BN for the top eigenvalue and for the trace, below 1 at the shallowest ResNet of the
  preset (BN not smoother) and above 1 at the deepest (BN smoother). We train for a few hundred
  steps, not to convergence, and the unnormalised ResNet with Fixup (PyHessian removed BN and
  trained otherwise unchanged): said in docs/depth.md;
- Yang et al. 2019 ("A Mean Field Theory of Batch Normalization"): at initialisation, gradients
  explode with depth in BN networks without skip connections. Here: the first conv's gradient norm
  over the head's, per BN VGG, deepest / shallowest above 1 (it grows with depth), and at the
  deepest VGG, BN / standard above 1;
- Santurkar et al. (the paper): after the short run, beta_eff standard / BN above 1, at the deepest
  VGG and at the deepest ResNet (each other depth: a diagnostic).

Each claim compares the two networks of one seed (paired), one-sided as every claim here.

Calibration (rule declared here before any calibration run; seed 0's claims had been read at the
uncalibrated preset, lr 0.1 everywhere): for each network depth, the preset's learning rate is the
first of ``CANDIDATE_LRS`` (0.1, 0.05, 0.02) at which both of its networks, standard and BN, leave
the ln 10 plateau (a train record below ln 10 - 0.1: the trainer's ``left_plateau_step``) within the
preset's steps on ``CALIBRATION_SEED`` (100), never an evaluation seed. Only training is read, no
probe. A depth at which no candidate passes keeps the first (0.1), and docs/depth.md says so. The
calibrated preset is then evaluated on seeds never used before (``--first-seed 1``).
"""

from __future__ import annotations

from landscape.claims import Claim, ratio
from landscape.errors import UserError, quote
from landscape.experiments import Experiment, Figure, register
from landscape.names import NETS, label_of
from landscape.planning import RunSpec, paired_run
from landscape.report import figures as F
from landscape.results import RunRecords, probe_series, series

DEFAULTS = {
    "vgg_depths": [11, 13, 16, 19],
    "resnet_depths": [20, 56],
    "lrs": {},
    "lr": 0.1,
    "run": {},
    "vgg": {},
    "resnet": {},
}


CANDIDATE_LRS = (0.1, 0.05, 0.02)  # tried in this order; the first at which both networks leave the plateau
CALIBRATION_SEED = 100


def calibrate(runs, candidates=CANDIDATE_LRS) -> dict[str, tuple[float | None, str]]:
    """The calibration rule above, read from calibration runs (``RunRecords`` of depth runs on any seeds
    the caller chose). Per variant (``vgg19``, ...): ``(lr, why)``; lr is None while a candidate that
    decides it has not been run yet."""
    left: dict[tuple[str, float], dict[str, bool]] = {}
    for run in runs:
        if run.state not in ("done", "diverged"):  # unfinished: not run yet, as far as the rule goes
            continue
        arch, depth, net, lr = _calibration_facts(run)
        key = (variant(arch, depth), lr)
        left.setdefault(key, {})[net] = run.state == "done" and run.status.get("left_plateau_step") is not None
    out = {}
    for v in sorted({v for v, _ in left}):
        failed = []
        for lr in candidates:
            nets = left.get((v, lr), {})
            if set(nets) != {"standard", "bn"}:
                out[v] = (None, f"lr {lr:g} not run for both networks" + (f" ({'; '.join(failed)})" if failed else ""))
                break
            if all(nets.values()):
                out[v] = (
                    lr,
                    "both left the plateau at lr " + f"{lr:g}" + (f" ({'; '.join(failed)})" if failed else ""),
                )
                break
            failed.append(f"lr {lr:g}: " + ", ".join(n for n, ok in sorted(nets.items()) if not ok) + " stuck")
        else:
            out[v] = (candidates[0], "no candidate passed (" + "; ".join(failed) + "): keeps the first")
    return out


def _calibration_facts(run) -> tuple[str, int, str, float]:
    """(arch, depth, net, lr) of a calibration run from its config; a config that lacks them is refused in one line."""
    cfg = run.config if isinstance(run.config, dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    optim = cfg.get("optim") if isinstance(cfg.get("optim"), dict) else {}
    arch = model.get("arch")
    depth = (model.get(arch) or {}).get("depth") if isinstance(model.get(arch), dict) else None
    net = {v: k for k, v in NETS.items()}.get(model.get("norm"))
    lr = optim.get("lr")
    if (
        arch not in ("vgg", "resnet")
        or not isinstance(depth, int)
        or net not in ("standard", "bn")
        or isinstance(lr, bool)
        or not isinstance(lr, (int, float))
    ):
        raise UserError(
            f"run {quote(str(run.path))} is not a depth calibration run (its config has no usable "
            "model.arch, depth, norm or optim.lr); pass the runs the depth experiment made"
        )
    return arch, depth, net, float(lr)


def settings(preset: dict) -> dict:
    return {**DEFAULTS, **(preset.get("depth") or {})}


def variant(arch: str, depth: int) -> str:
    return f"{arch}{depth}"


def lr_of(s: dict, arch: str, depth: int) -> float:
    return float((s.get("lrs") or {}).get(variant(arch, depth), s["lr"]))


def depth_run(preset: dict, arch: str, depth: int, net: str, seed: int, overrides=()) -> RunSpec:
    s = settings(preset)
    model = {arch: {"depth": depth}}
    after = [{"model": {"init": "fixup"}}] if arch == "resnet" and net == "standard" else []
    return paired_run(
        f"depth-{arch}{depth}",
        arch,
        net,
        lr_of(s, arch, depth),
        seed,
        [s["run"], s[arch], {"model": model}],
        overrides,
        variant=variant(arch, depth),
        after=after,
    )


def plan(preset: dict, seeds: list[int], overrides: list[dict]) -> list[RunSpec]:
    s = settings(preset)
    return [
        depth_run(preset, arch, d, net, seed, overrides)
        for arch in ("vgg", "resnet")
        for d in s[f"{arch}_depths"]
        for net in ("standard", "bn")
        for seed in seeds
    ]


# ------------------------------------------------------------------ per-run quantities (from records)


def at_step(which: str, probe: str, key: str):
    """A quantity at the run's first probe step (``init``) or its last (``end``)."""

    def fn(run: RunRecords) -> float | None:
        pts = [(s, v) for s, v in probe_series(run, probe, key)]
        if not pts:
            return None
        return (pts[0] if which == "init" else pts[-1])[1]

    fn.__name__ = f"{which}_{key}"
    return fn


def _pair(arch: str, depth: int, metric, a: str, b: str):
    """Per seed ``metric`` of net ``a`` over net ``b`` at one (arch, depth)."""

    def measure(t) -> dict:
        sub = t.only(variant(arch, depth))
        return ratio(sub.per_seed(metric, arch, a), sub.per_seed(metric, arch, b))

    return measure


def _deep_over_shallow(arch: str, deep: int, shallow: int, net: str, metric):
    def measure(t) -> dict:
        return ratio(
            t.only(variant(arch, deep)).per_seed(metric, arch, net),
            t.only(variant(arch, shallow)).per_seed(metric, arch, net),
        )

    return measure


def claims(preset: dict) -> list[Claim]:
    s = settings(preset)
    vgg, res = sorted(s["vgg_depths"]), sorted(s["resnet_depths"])
    end_sharp, end_trace = at_step("end", "sharpness", "sharpness"), at_step("end", "hessian_trace", "hessian_trace")
    explode = at_step("init", "layer_grad_norm", "grad_first_over_last")
    beta = at_step("end", "gradient_sweep", "beta_eff")
    out = []
    if res:
        for what, metric in (("top Hessian eigenvalue", end_sharp), ("Hessian trace", end_trace)):
            key = "sharpness" if metric is end_sharp else "trace"
            out.append(
                Claim(
                    f"depth.pyhessian.resnet{res[0]}.{key}",
                    f"PyHessian: in the shallow ResNet-{res[0]} BN "
                    f"does not make the landscape smoother (the {what} is not lower with BN)",
                    f"{what} after the short run, no BN (Fixup) / BN",
                    _pair("resnet", res[0], metric, "standard", "bn"),
                    1.0,
                    direction="below",
                    transform="log",
                    layers="all parameters",
                    statement="pyhessian",
                )
            )
            if len(res) > 1:
                out.append(
                    Claim(
                        f"depth.pyhessian.resnet{res[-1]}.{key}",
                        f"PyHessian: in the deep ResNet-{res[-1]} BN makes the landscape smoother (a lower {what})",
                        f"{what} after the short run, no BN (Fixup) / BN",
                        _pair("resnet", res[-1], metric, "standard", "bn"),
                        1.0,
                        transform="log",
                        layers="all parameters",
                        statement="pyhessian",
                    )
                )
    if len(vgg) > 1:
        out.append(
            Claim(
                "depth.yang.vgg_bn_grows",
                f"Yang et al.: at initialisation the gradient explodes with depth "
                f"in BN VGG (no skip connections): VGG-{vgg[-1]} over VGG-{vgg[0]}",
                "first conv's gradient norm / the head's at step 1, deeper / shallower",
                _deep_over_shallow("vgg", vgg[-1], vgg[0], "bn", explode),
                1.0,
                transform="log",
                layers="the first conv and the head",
                statement="yang",
            )
        )
    if vgg:
        out.append(
            Claim(
                f"depth.yang.vgg{vgg[-1]}.bn_over_standard",
                f"Yang et al.: at initialisation the deepest "
                f"VGG ({vgg[-1]}) has a larger gradient explosion with BN than without",
                "first conv's gradient norm / the head's at step 1, BN / standard",
                _pair("vgg", vgg[-1], explode, "bn", "standard"),
                1.0,
                transform="log",
                layers="the first conv and the head",
                statement="yang",
            )
        )
    for arch, depths in (("vgg", vgg), ("resnet", res)):
        for d in depths:
            out.append(
                Claim(
                    f"depth.fig4.{arch}{d}.beta_eff",
                    f"The paper at {arch.upper() if arch == 'vgg' else 'ResNet'}"
                    f"-{d}: effective beta-smoothness is lower with BN after the short run",
                    "beta_eff at the last probe step, standard / BN",
                    _pair(arch, d, beta, "standard", "bn"),
                    1.0,
                    transform="log",
                    layers="all parameters",
                    headline=d == depths[-1],
                    statement="smoother",
                )
            )
    for arch, depths in (("vgg", vgg), ("resnet", res)):  # the same ratios at every depth, as diagnostics
        for d in depths:
            for key, metric in (("sharpness", end_sharp), ("trace", end_trace)):
                if arch == "resnet" and d in (res[0], res[-1]):
                    continue
                out.append(
                    Claim(
                        f"depth.{arch}{d}.{key}",
                        f"{arch} depth {d}: the {key} after the short run is lower with BN",
                        f"{key}, standard / BN",
                        _pair(arch, d, metric, "standard", "bn"),
                        1.0,
                        transform="log",
                        headline=False,
                        statement="sharpness",
                    )
                )
    return out


def figures(t) -> list[Figure]:
    rows = [(v, g) for v in t.variants() for lr in t.only(v).lrs() if (g := t.only(v).groups(lr=lr))]
    if not rows:
        return []
    return [
        Figure(
            "Per depth: at initialisation and after the short run, the top Hessian eigenvalue, the trace, "
            "beta_eff, and the gradient norm per layer at initialisation (first conv to the head)",
            depth_panels,
            (rows, "depth"),
        )
    ]


EXPERIMENT = register(
    Experiment(
        about=(
            "What to look for: per network, whether BN lowers the curvature (top eigenvalue, trace) and beta_eff at "
            "each depth, and how the gradient norm falls from the first layer to the head at initialisation (a "
            "steep fall is Yang et al.'s explosion, read backwards from the head)."
        ),
        name="depth",
        title="Beyond the paper: depth, residual connections and the critiques",
        anchor="depth",
        help="Beyond the paper: VGG-11/13/16/19 and CIFAR ResNets with and without BN: curvature, beta_eff and "
        "per-layer gradients at initialisation and after a short run, against PyHessian's and Yang et al.'s claims.",
        plan=plan,
        claims=claims,
        figures=figures,
        paper=False,
        preset_key="depth",
    )
)


# ------------------------------------------------------------------ this experiment's own figures


@F.drawing
def depth_panels(rows: list[tuple[str, dict[str, list[RunRecords]]]], title: str) -> bytes:
    """One row per (architecture, depth): top eigenvalue, trace and beta_eff over the probe steps (step 1 is
    the initialisation), and the gradient norm per layer at step 1, per network (first seed)."""
    panels = (
        ("top Hessian eigenvalue", series("sharpness", "sharpness"), True),
        ("Hessian trace", series("hessian_trace", "hessian_trace"), True),
        ("beta_eff", series("gradient_sweep", "beta_eff"), True),
    )
    fig, axes = F.subplots(
        len(rows),
        len(panels) + 1,
        figsize=(F.panel_width(len(panels) + 1) * (len(panels) + 1), 2.8 * len(rows)),
        squeeze=False,
    )
    for row, (label, groups) in zip(axes, rows):
        for ax, (name, fn, logy) in zip(row, panels):
            F.plot_lines(ax, groups, fn, logy=logy)
            ax.set_ylabel(f"{name}\n{F.text(label)}", fontsize=8)
            ax.set_xlabel("step")
        ax = row[-1]
        for net, runs in groups.items():
            first = next(iter(probe_series(runs[0], "layer_grad_norm", "layer_grad_norm")), None)
            layers = F.probed_layers(runs[:1], "layer_grad_norm")
            values = first[1] if first else None
            if values and layers and all(layer in values for layer in layers):
                ys = [values[layer] for layer in layers]
                ax.plot(range(len(ys)), ys, color=F.color_of(net), marker=".", label=F.text(label_of(net)))
        if ax.has_data():
            ax.set_yscale("log")
        ax.set_xlabel("layer (first conv ... head)")
        ax.set_ylabel(f"gradient norm at step 1\n{F.text(label)}", fontsize=8)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title, y=1.01)
    fig.tight_layout()
    return F.to_png(fig)
