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

# Network kinds as the paper names them, and the model.norm each one uses.
NETS = {"standard": "none", "bn": "batch", "noisy_bn": "noisy_batch", "l1": "l1", "l2": "l2", "linf": "linf",
        "ln": "layer", "rms": "rms", "dyt": "dyt"}
PRESET_KEYS = ("extends", "lrs", "seeds", "vgg", "dln", "dln_regimes", "stability", "transformer")
REGRESSION_LOSS_TAGS = {"sum_squares": "sum", "mean_squares": "mean", "mse": "mse"}


def configs_dir() -> Path:
    """The shipped configs: inside the installed package (a wheel), else the repository's ``configs/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "presets").is_dir():
            return candidate
    raise UserError(f"the shipped configs are missing (looked in '{here / 'configs'}' and "
                    f"'{here.parent / 'configs'}'); reinstall landscape")


def preset_names() -> list[str]:
    return sorted(p.stem for p in (configs_dir() / "presets").glob("*.yaml"))


@dataclass(frozen=True)
class RunSpec:
    """One planned run: what the experiment calls it (arch, net, lr, seed) and its config."""

    name: str
    arch: str  # vgg | dln
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


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A preset file; ``extends: OTHER`` starts from preset OTHER and overrides what it lists."""
    names = preset_names()
    if name not in names:
        raise UserError(f"unknown preset '{name}'; choose one of {', '.join(names)}")
    path = configs_dir() / "presets" / f"{name}.yaml"
    preset = read_yaml(path)
    unknown = [k for k in preset if k not in PRESET_KEYS]
    if unknown:
        raise UserError(f"preset file '{path}' has unknown key '{unknown[0]}'; valid keys: {', '.join(PRESET_KEYS)}")
    if "extends" in preset:
        base = preset.pop("extends")
        if base in _seen + (name,):
            raise UserError(f"preset file '{path}': 'extends: {base}' makes a cycle; remove it")
        parent = load_preset(str(base), _seen + (name,))
        parent.pop("name", None)
        preset = _deep_merge(parent, preset)
    preset.setdefault("lrs", [0.1, 0.5])
    seeds = preset.setdefault("seeds", 1)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"preset file '{path}': 'seeds' must be a positive integer; got {seeds!r}")
    preset["name"] = name
    return preset


def vgg_run(preset: dict, net: str, lr: float, seed: int, overrides: list[dict] = ()) -> RunSpec:
    name = f"vgg-{net}-lr{lr:g}-s{seed}"
    cfg = build_config([preset.get("vgg", {}),
                        {"name": name, "seed": seed, "data_seed": seed, "noise_seed": seed,
                         "model": {"arch": "vgg", "norm": NETS[net]}, "optim": {"lr": lr}}, *overrides])
    return RunSpec(name, "vgg", net, lr, seed, cfg)


def dln_run(preset: dict, net: str, seed: int, overrides: list[dict] = (), samples: int | None = None,
            loss: str | None = None) -> RunSpec:
    """The deep linear network of the preset; ``samples`` and ``loss`` set another regime
    (the run is then named for it, and is the preset's own run when they equal its values)."""
    base = read_yaml(configs_dir() / "dln.yaml")
    cfg = build_config([base, preset.get("dln", {}),
                        {"seed": seed, "data_seed": seed, "noise_seed": seed, "model": {"norm": NETS[net]}},
                        *overrides])
    own = (cfg.data.gaussian_samples, cfg.loss)
    regime = (samples or own[0], loss or own[1])
    if regime != own:
        cfg = build_config([{"data": {"gaussian_samples": regime[0]}, "loss": regime[1]}], base=cfg)
    tag = f"-{regime_name(*regime)}" if regime != own else ""
    name = f"dln-{net}{tag}-lr{cfg.optim.lr:g}-s{seed}"
    cfg = build_config([{"name": name}], base=cfg)
    return RunSpec(name, "dln", net, cfg.optim.lr, seed, cfg, regime_name(*regime) if samples or loss else "")


def regime_name(samples: int, loss: str) -> str:
    """A DLN regime's label, e.g. ``n1000-sum``: the number of samples and how the loss reduces them."""
    return f"n{samples}-{REGRESSION_LOSS_TAGS.get(loss, loss)}"


def check_overrides(overrides: list[dict]) -> None:
    """Overrides that would break an experiment's plan are refused before any work."""
    for key in ("name", "seed", "data_seed", "noise_seed"):
        if any(key in o for o in overrides):  # --set name=x would put every run into one directory
            raise UserError(f"--set {key}=... cannot be used with an experiment: each run's {key} comes from its "
                            "network, lr and seed (use --seeds and --out instead)")


def vgg_runs(preset: dict, nets, lrs, seeds, overrides=()) -> list[RunSpec]:
    return [vgg_run(preset, net, lr, s, overrides) for lr in lrs for net in nets for s in seeds]


def dln_runs(preset: dict, nets, seeds, overrides=()) -> list[RunSpec]:
    return [dln_run(preset, net, s, overrides) for net in nets for s in seeds]
