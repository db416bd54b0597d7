"""Planning: presets, and the runs (network, lr, seed -> config) an experiment needs.

A run's name fixes its config, so runs are shared between experiments: the standard and BN
VGG at lr 0.1 serve Figures 1-4 alike and are trained once. Runs compared within an
experiment are paired: the same ``seed``, ``data_seed`` and ``noise_seed``, hence the same
initial draw, batch order and probe batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from landscape.config import Config, build_config, read_yaml
from landscape.errors import UserError
from landscape.names import NETS  # noqa: F401 (planning's network kinds)

# What every preset may hold; an experiment adds its own section's key (Experiment.preset_key).
PRESET_KEYS = ("extends", "lrs", "seeds", "vgg", "dln", "note")  # note: said in one line when the preset runs
REGRESSION_LOSS_TAGS = {"sum_squares": "sum", "mean_squares": "mean", "mse": "mse"}


def configs_dir() -> Path:
    """The shipped configs: inside the installed package (a wheel), else the repository's ``configs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "presets").is_dir():
            return candidate
    raise UserError(
        f"the shipped configs are missing (looked in '{here / 'configs'}' and "
        f"'{here.parent / 'configs'}'); reinstall landscape"
    )


def preset_names() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "presets").glob("*.yaml"))


@dataclass(frozen=True)
class RunSpec:
    """One planned run: what the experiment calls it (arch, net, lr, seed) and its config."""

    name: str
    arch: str  # model.arch: vgg | dln | vit | mlp | resnet
    net: str  # a key of NETS
    lr: float
    seed: int
    cfg: Config
    variant: str = ""  # a setting the experiment varies beyond net, lr and seed (e.g. a DLN regime)

    def describe(self) -> dict:
        """The run as an experiment summary lists it (the report groups runs by these fields)."""
        row = {"arch": self.arch, "net": self.net, "lr": self.lr, "seed": self.seed}
        return {**row, "variant": self.variant} if self.variant else row


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_preset(name: str, keys: tuple[str, ...] = (), _seen: tuple[str, ...] = ()) -> dict:
    """A preset file; ``extends: OTHER`` starts from preset OTHER and overrides what it lists.
    ``keys``: the sections experiments declare beside :data:`PRESET_KEYS`."""
    names = preset_names()
    if name not in names:
        raise UserError(f"unknown preset '{name}'; choose one of {', '.join(names)}")
    path = configs_dir() / "presets" / f"{name}.yaml"
    preset = read_yaml(path)
    valid = (*PRESET_KEYS, *keys)
    unknown = [k for k in preset if k not in valid]
    if unknown:
        raise UserError(f"preset file '{path}' has unknown key '{unknown[0]}'; valid keys: {', '.join(valid)}")
    if "extends" in preset:
        base = preset.pop("extends")
        if base in _seen + (name,):
            raise UserError(f"preset file '{path}': 'extends: {base}' makes a cycle; remove it")
        parent = load_preset(str(base), keys, _seen + (name,))
        parent.pop("name", None)
        preset = _deep_merge(parent, preset)
    preset.setdefault("lrs", [0.1, 0.5])
    seeds = preset.setdefault("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"preset file '{path}': 'seeds' must be a positive integer; got {seeds!r}")
    preset["name"] = name
    return preset


def run_name(family: str, net: str, lr: float, seed: int, tag: str = "") -> str:
    """A planned run's name, e.g. ``vgg-bn-lr0.1-s0``, ``stability-vgg-bn-adam-lr0.0001-s2``: its name fixes its
    config."""
    return f"{family}-{net}{'-' + tag if tag else ''}-lr{lr:g}-s{seed}"


def paired_run(
    family: str,
    arch: str,
    net: str,
    lr: float,
    seed: int,
    sections: list[dict],
    overrides=(),
    optim: dict | None = None,
    tag: str = "",
    variant: str = "",
    after: list[dict] = (),
) -> RunSpec:
    """One run of a paired comparison: ``sections`` (the preset's), then the run's own settings
    (its network's norm, its lr, and ``seed`` as its init, data and noise seed, which pairs it with
    the other networks of the same seed), then ``overrides`` (``--set``), then ``after``."""
    name = run_name(family, net, lr, seed, tag)
    own = {
        "name": name,
        "seed": seed,
        "data_seed": seed,
        "noise_seed": seed,
        "model": {"arch": arch, "norm": NETS[net]},
        "optim": {**(optim or {}), "lr": lr},
    }
    return RunSpec(name, arch, net, lr, seed, build_config([*sections, own, *overrides, *after]), variant)


# What the experiments read from a VGG run of the ``vgg`` family (their claims and their report figures), where it is
# less than every probe of the preset: a run carries only these. Probes never change training (tested bitwise), so
# this saves time and changes no weight, claim or figure (tests/experiments/test_experiments.py runs reproduce
# both ways and compares). By network, at the preset's first lr (norms: the l_p appendix's bands, sharpness panel
# and activation ridges; ics-distrib: Figure 2's activation statistics):
NET_READS = {
    "noisy_bn": ("activation_stats",),
    "l1": ("gradient_sweep", "sharpness", "activation_stats"),
    "l2": ("gradient_sweep", "sharpness", "activation_stats"),
    "linf": ("gradient_sweep", "sharpness", "activation_stats"),
}
WIDTH_LR = 0.1  # the width experiment's lr when its preset section names none (landscape.experiments.width)


def vgg_reads(preset: dict, net: str, lr: float) -> tuple[str, ...] | None:
    """The probes the experiments read from the run of ``net`` at ``lr`` (None: all of them). At another lr than the
    preset's first, train-compare is the only reader (Figure 1's curves and accuracy: none), unless it is the width
    experiment's lr (its run at the preset's own width is this run)."""
    if lr != preset["lrs"][0] and lr != float((preset.get("width") or {}).get("lr", WIDTH_LR)):
        return ()
    return NET_READS.get(net)


def vgg_run(preset: dict, net: str, lr: float, seed: int, overrides: list[dict] = ()) -> RunSpec:
    """A VGG run of the preset's ``vgg`` section, with only the probes an experiment reads from it (a ``--set`` of
    ``probes.enabled`` still decides)."""
    section = preset.get("vgg", {})
    reads = vgg_reads(preset, net, lr)
    if reads is not None:
        enabled = (section.get("probes") or {}).get("enabled") or []
        section = _deep_merge(section, {"probes": {"enabled": [p for p in enabled if p in reads]}})
    return paired_run("vgg", "vgg", net, lr, seed, [section], overrides)


def dln_run(
    preset: dict, net: str, seed: int, overrides: list[dict] = (), samples: int | None = None, loss: str | None = None
) -> RunSpec:
    """The deep linear network of the preset; ``samples`` and ``loss`` set another regime
    (the run is then named for it, and is the preset's own run when they equal its values)."""
    sections = [read_yaml(configs_dir() / "dln.yaml"), preset.get("dln", {})]
    cfg = build_config([*sections, *overrides])  # the preset's own lr and regime
    own = (cfg.data.gaussian_samples, cfg.loss)
    regime = (samples or own[0], loss or own[1])
    after = [{"data": {"gaussian_samples": regime[0]}, "loss": regime[1]}] if regime != own else []
    return paired_run(
        "dln",
        "dln",
        net,
        cfg.optim.lr,
        seed,
        sections,
        overrides,
        tag=regime_name(*regime) if regime != own else "",
        variant=regime_name(*regime) if samples or loss else "",
        after=after,
    )


def regime_name(samples: int, loss: str) -> str:
    """A DLN regime's label, e.g. ``n1000-sum``: the number of samples and how the loss reduces them."""
    return f"n{samples}-{REGRESSION_LOSS_TAGS.get(loss, loss)}"


def check_overrides(overrides: list[dict]) -> None:
    """Overrides that would break an experiment's plan are refused before any work."""
    for key in ("name", "seed", "data_seed", "noise_seed"):
        if any(key in o for o in overrides):  # --set name=x would put every run into one directory
            raise UserError(
                f"--set {key}=... cannot be used with an experiment: each run's {key} comes from its "
                "network, lr and seed (use --seeds and --out instead)"
            )


def vgg_runs(preset: dict, nets, lrs, seeds, overrides=()) -> list[RunSpec]:
    return [vgg_run(preset, net, lr, s, overrides) for lr in lrs for net in nets for s in seeds]


def dln_runs(preset: dict, nets, seeds, overrides=()) -> list[RunSpec]:
    return [dln_run(preset, net, s, overrides) for net in nets for s in seeds]
