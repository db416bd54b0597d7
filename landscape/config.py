"""One config tree: frozen dataclasses with commented defaults.

Files in ``configs/`` override a subset of these fields; ``--set a.b=value``
overrides are parsed as YAML scalars and type-checked against the field.
An unknown key is an error that names the valid ones. Each run saves its
resolved config (``config.yaml``) so a run directory says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from landscape.data import IMAGE_DATASETS
from landscape.errors import UserError
from landscape.probes.monitor import DEFAULT_ETA_MULTIPLES, PROBE_NAMES
from landscape.probes.curvature import min_trace_samples
from landscape.probes.schedules import SCHEDULES


@dataclass(frozen=True)
class DataConfig:
    # cifar10 | cifar100 | mnist | fashion_mnist | svhn (torchvision's) | folder (train/<class>/, test/<class>/
    # images of any size, grayscale or colour, in --data-dir) | synthetic (generated images, for tests) |
    # gaussian (DLN regression)
    dataset: str = "cifar10"
    image_size: int = 32  # side images are resized to (not CIFAR-10): MNIST's 28x28 become 32x32 for VGG's 5 poolings
    batch_size: int = 128  # examples per step; 0 = the whole training set (full-batch gradient descent)
    augment: bool = False  # random crop with 4-pixel padding + horizontal flip (off in the paper)
    train_subset: int = 0  # train on a fixed random subset of N examples, the same for every run (0 = all)
    test_subset: int = 0  # evaluate on a fixed random subset of N test examples (0 = all)
    synthetic_size: int = 256  # examples per split for dataset=synthetic
    gaussian_samples: int = 1000  # examples for dataset=gaussian; x ~ N(0, I), y = A x
    gaussian_dim: int = 10  # input and output dimension for dataset=gaussian
    gaussian_seed: int = 0  # seed of the fixed Gaussian matrix A and of the inputs


@dataclass(frozen=True)
class NoiseConfig:
    """Noise injected after each BatchNorm by norm=noisy_batch (PAPER.md, Experiment 2)."""

    form: str = "per_unit"  # per_unit: the paper's Algorithm 1 | per_layer: landscape 0.1's form (see NoisyBatchNorm)
    mean_range: tuple[float, float] = (-0.5, 0.5)  # mu_j ~ U(lo, hi), per unit (channel) j and step
    scale_range: tuple[float, float] = (1.0, 1.25)  # sigma_j ~ U(lo, hi), per unit j and step
    mean_spread: float = 0.1  # m[i,j] ~ U(mu_j - spread, mu_j + spread), per activation i (sample, position)
    scale_std: float = 0.1  # s[i,j] ~ N(sigma_j, scale_std**2), per activation i


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "vgg"  # vgg | dln (deep linear network) | vit (a small Vision Transformer)
    vgg_depth: int = 11  # VGG configuration: 11 | 13 | 16 | 19
    width: float = 1.0  # VGG channel multiplier: 0.25 gives 16..128 channels instead of 64..512
    head: str = "linear"  # VGG head: linear (one layer) | mlp (512-512-10, scaled by width)
    norm: str = "none"  # none | batch | noisy_batch | l1 | l2 | linf, placed conv -> norm -> ReLU
    init: str = "xavier"  # xavier (Glorot uniform, the paper) | kaiming | torch_default
    dln_depth: int = 25  # DLN: number of linear layers
    dln_width: int = 10  # DLN: width of every hidden layer
    vit_patch: int = 4  # ViT: patch size (32x32 images in 4x4 patches: 64 tokens and a class token)
    vit_dim: int = 64  # ViT: token width
    vit_depth: int = 4  # ViT: pre-norm blocks
    vit_heads: int = 4  # ViT: attention heads (vit_dim divisible by it)
    vit_mlp_ratio: float = 2.0  # ViT: MLP hidden width / token width
    dropout: float = 0.0  # ViT: dropout on attention weights, MLP and embeddings
    noise: NoiseConfig = field(default_factory=NoiseConfig)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd (the paper) | adam | adamw
    lr: float = 0.1  # constant learning rate
    momentum: float = 0.0  # SGD momentum (0 in the paper)
    nesterov: bool = False  # SGD: Nesterov momentum
    weight_decay: float = 0.0  # L2 weight decay (0 in the paper); decoupled for adamw
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw: decay rates of the first and second moments
    eps: float = 1e-8  # adam/adamw: added to sqrt(second moment) in the preconditioner


@dataclass(frozen=True)
class LogConfig:
    train_every: int = 50  # steps between train loss/accuracy records (means over the interval)
    eval_every: int = 500  # steps between test-set evaluations (0 = only at the end)
    checkpoint_every: int = 500  # steps between checkpoints (the last step is always saved)


@dataclass(frozen=True)
class ProbeConfig:
    enabled: tuple[str, ...] = ()  # any of landscape.probes.PROBE_NAMES: gradient_sweep, ics_opti, activation_stats, sharpness, curvature, layer_sharpness, hessian_trace, spectral_density
    schedule: str = "every"  # every (N steps) | log (log-spaced) | list (explicit steps) | mixed (log + every)
    every: int = 100  # schedule=every or mixed: probe at step 1 and every N steps
    points: int = 20  # schedule=log or mixed: about this many steps, evenly spaced in log(step)
    steps: tuple[int, ...] = ()  # schedule=list: probe at exactly these steps
    etas: tuple[float, ...] = DEFAULT_ETA_MULTIPLES  # gradient_sweep steps, multiples of optim.lr
    layers: tuple[str, ...] = ()  # module names for ics_opti/activation_stats (empty: every module owning parameters)
    activation_batch: int = 256  # size of the fixed train-split batch activation_stats measures every time
    sharpness_iters: int = 20  # Lanczos iterations (Hessian-vector products) at most
    sharpness_tol: float = 1e-3  # stop when the eigenvalue's error bound is below this relative tolerance
    warm_start: bool = False  # start each sharpness Lanczos from the previous measurement's eigenvector
    trace_samples: int = 30  # hessian_trace: Hessian-vector products (probe vectors)
    trace_method: str = "hutchinson"  # hessian_trace: hutchinson | hutch++
    density_vectors: int = 4  # spectral_density: random start vectors (each one Lanczos run)
    density_steps: int = 20  # spectral_density: Lanczos steps per vector (quadrature nodes)
    eval_mode: bool = False  # probe in eval mode (running statistics) instead of the training mode


@dataclass(frozen=True)
class Config:
    name: str = "run"  # run directory name under --out
    steps: int = 15000  # optimizer updates (15,000 x batch 128 is ~38 CIFAR-10 epochs)
    seed: int = 0  # model initialisation
    data_seed: int = 0  # batch order and augmentation; equal across compared runs pairs them
    noise_seed: int = 0  # noisy-BN noise
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    loss: str = "cross_entropy"  # cross_entropy | sum_squares (sum over samples of ||f(x) - y||^2) | mean_squares (its mean over samples) | mse (mean over samples and outputs)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    outputs: tuple[str, ...] = ()  # also write scalars to: tensorboard (<run>/tensorboard) | wandb (offline, <run>/wandb)
    probes: ProbeConfig = field(default_factory=ProbeConfig)


LOSS_NAMES = ("cross_entropy", "sum_squares", "mean_squares", "mse")  # loss (landscape.train.LOSSES); the last three regress
NORMS = ("none", "batch", "noisy_batch", "l1", "l2", "linf", "layer", "rms", "dyt")  # model.norm
ARCH_NORMS = {"vgg": ("none", "batch", "noisy_batch", "l1", "l2", "linf"),  # after each conv (conv -> norm -> ReLU)
              "dln": ("none", "batch", "noisy_batch", "l1", "l2", "linf"),  # after each linear layer but the last
              "vit": ("none", "layer", "rms", "batch", "dyt")}  # every pre-norm and the final norm
NOISE_FORMS = ("per_unit", "per_layer")  # model.noise.form
OPTIMIZERS = ("sgd", "adam", "adamw")  # optim.name

CHOICES: dict[str, tuple[str, ...]] = {
    "loss": LOSS_NAMES,
    "data.dataset": (*IMAGE_DATASETS, "synthetic", "gaussian"),
    "optim.name": OPTIMIZERS,
    "model.arch": tuple(ARCH_NORMS),
    "model.head": ("linear", "mlp"),
    "model.norm": NORMS,
    "model.noise.form": NOISE_FORMS,
    "model.init": ("xavier", "kaiming", "torch_default"),
    "probes.schedule": SCHEDULES,
    "probes.trace_method": ("hutchinson", "hutch++"),
}
VGG_DEPTHS = (11, 13, 16, 19)
MAX_LR = 1e9  # larger learning rates overflow float32 arithmetic at the first step instead of diverging


def field_paths(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the tree (``optim.lr``, ...) mapped to its type."""
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(field_paths(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def short(value: Any, limit: int = 80) -> str:
    """A value as it goes into an error message: bounded, however large the value (a YAML alias bomb)."""
    r = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    def bad(expected: str) -> UserError:
        return UserError(f"config key '{key}' expects {expected}, got {short(value)}")

    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string; a user means the number
            try:
                value = float(value.strip())
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]  # --set probes.enabled=sharpness
            if not isinstance(value, (list, tuple)):
                raise bad(f"a list, e.g. [{'1.0, 2.0' if args[0] is float else 'a, b'}]")
            return tuple(_coerce(v, args[0], key) for v in value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad(f"a list of {len(args)} numbers, e.g. [0.5, 1.0]")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug, not bad input


def _merge(cls: type, base: Any, updates: dict, prefix: str) -> Any:
    if not isinstance(updates, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or 'top'}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(cls)
    changes = {}
    for key, value in updates.items():
        if key not in hints:
            valid = ", ".join(sorted(field_paths(cls, prefix)))
            raise UserError(f"unknown config key '{prefix}{key}'; valid keys: {valid}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            changes[key] = _merge(tp, getattr(base, key), value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, tp, f"{prefix}{key}")
    return dataclasses.replace(base, **changes)


def parse_override(text: str) -> dict:
    """``"optim.lr=0.5"`` -> ``{"optim": {"lr": 0.5}}``; values are YAML scalars."""
    if "=" not in text:
        raise UserError(f"--set expects key=value (e.g. optim.lr=0.5), got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"--set expects key=value (e.g. optim.lr=0.5), got '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found; pass a YAML file such as configs/vgg_bn.yaml")
    try:
        loaded = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"config file '{path}' is not valid YAML ({first}); fix the file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def build_config(updates: list[dict] = (), base: Config | None = None) -> Config:
    """Apply each mapping of updates in order to ``base`` (defaults) and validate."""
    cfg = base or Config()
    for update in updates:
        cfg = _merge(Config, cfg, update, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Defaults, then the YAML file, then each ``--set key=value`` in order."""
    updates = [read_yaml(path)] if path is not None else []
    updates += [parse_override(o) for o in overrides]
    return build_config(updates, base)


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> None:
    """Nonsense values (negative sizes, unknown choices) end here, before any work."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise UserError(f"config key '{key}' must be one of {', '.join(allowed)}; got {short(_get(cfg, key))}")
    if cfg.model.arch == "vgg" and cfg.model.vgg_depth not in VGG_DEPTHS:
        raise UserError(f"model.vgg_depth must be one of {VGG_DEPTHS}; got {cfg.model.vgg_depth}")
    positive = ["steps", "model.dln_depth", "model.dln_width", "log.train_every", "log.checkpoint_every",
                "data.synthetic_size", "data.gaussian_samples", "data.gaussian_dim"]
    for key in positive:
        if _get(cfg, key) <= 0:
            raise UserError(f"config key '{key}' must be positive; got {_get(cfg, key)}")
    non_negative = ["data.batch_size", "data.train_subset", "data.test_subset", "log.eval_every",
                    "optim.momentum", "optim.weight_decay", "model.noise.mean_spread", "model.noise.scale_std"]
    for key in non_negative:
        if _get(cfg, key) < 0:
            raise UserError(f"config key '{key}' must be >= 0; got {_get(cfg, key)}")
    if not 0 < cfg.optim.lr <= MAX_LR:
        raise UserError(f"optim.lr must be in (0, {MAX_LR:g}]; got {cfg.optim.lr}")
    if not 0 <= cfg.optim.momentum < 1:
        raise UserError(f"optim.momentum must be in [0, 1); got {cfg.optim.momentum}")
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum == 0):
        raise UserError("optim.nesterov needs optim.name=sgd and optim.momentum > 0")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise UserError(f"optim.betas must be two numbers in [0, 1); got {list(cfg.optim.betas)}")
    if not cfg.optim.eps > 0:
        raise UserError(f"optim.eps must be positive; got {cfg.optim.eps}")
    if cfg.optim.name != "sgd" and cfg.optim.momentum:
        raise UserError(f"optim.momentum is SGD's; optim.name={cfg.optim.name} takes optim.betas instead")
    if not 0 < cfg.model.width <= 64:
        raise UserError(f"model.width must be in (0, 64]; got {cfg.model.width}")
    if not 0 < cfg.probes.sharpness_tol < 1:
        raise UserError(f"probes.sharpness_tol must be in (0, 1); got {cfg.probes.sharpness_tol}")
    if cfg.probes.trace_samples < min_trace_samples(cfg.probes.trace_method):
        raise UserError(f"probes.trace_samples must be at least {min_trace_samples(cfg.probes.trace_method)} with "
                        f"{cfg.probes.trace_method}, for a standard error; got {cfg.probes.trace_samples}")
    if any(s <= 0 for s in cfg.probes.steps):
        raise UserError(f"probes.steps must be positive step numbers; got {list(cfg.probes.steps)}")
    if cfg.model.norm not in ARCH_NORMS[cfg.model.arch]:
        raise UserError(f"model.norm={cfg.model.norm} is not one for model.arch={cfg.model.arch}; choose one of "
                        f"{', '.join(ARCH_NORMS[cfg.model.arch])}")
    if cfg.model.arch == "vit":
        m = cfg.model
        for key in ("vit_patch", "vit_dim", "vit_depth", "vit_heads"):
            if getattr(m, key) <= 0:
                raise UserError(f"config key 'model.{key}' must be positive; got {getattr(m, key)}")
        if m.vit_dim % m.vit_heads:
            raise UserError(f"model.vit_dim ({m.vit_dim}) must be divisible by model.vit_heads ({m.vit_heads})")
        side = 32 if cfg.data.dataset in ("cifar10", "synthetic") else cfg.data.image_size
        if side % m.vit_patch:
            raise UserError(f"model.vit_patch must divide the image size {side}; got {m.vit_patch}")
        if not m.vit_mlp_ratio > 0:
            raise UserError(f"model.vit_mlp_ratio must be positive; got {m.vit_mlp_ratio}")
    if not 0 <= cfg.model.dropout < 1:
        raise UserError(f"model.dropout must be in [0, 1); got {cfg.model.dropout}")
    if not 32 <= cfg.data.image_size <= 1024:
        raise UserError(f"data.image_size must be between 32 (VGG pools five times) and 1024; got {cfg.data.image_size}")
    image = cfg.data.dataset != "gaussian"
    if image != (cfg.model.arch in ("vgg", "vit")):
        raise UserError(f"model.arch={cfg.model.arch} does not fit data.dataset={cfg.data.dataset}; "
                        "use vgg or vit with image data sets and dln with gaussian")
    if image != (cfg.loss == "cross_entropy"):
        raise UserError(f"loss={cfg.loss} does not fit data.dataset={cfg.data.dataset}: image data sets are "
                        "classified (loss=cross_entropy), the gaussian one is regression (sum_squares, mean_squares "
                        "or mse)")
    for key in ("model.noise.mean_range", "model.noise.scale_range"):
        lo, hi = _get(cfg, key)
        if lo > hi:
            raise UserError(f"config key '{key}' must be [low, high] with low <= high; got [{lo}, {hi}]")
    from landscape.outputs import OUTPUT_NAMES, require

    for name in cfg.outputs:
        if name not in OUTPUT_NAMES:
            raise UserError(f"unknown output {short(name)} in outputs; choose from {', '.join(OUTPUT_NAMES)}")
        require(name, f"outputs: [{name}]")
    unknown = [p for p in cfg.probes.enabled if p not in PROBE_NAMES]
    if unknown:
        raise UserError(f"unknown probe '{unknown[0]}' in probes.enabled; choose from {', '.join(PROBE_NAMES)}")
    if not cfg.probes.etas or any(not (e > 0 and math.isfinite(e)) for e in cfg.probes.etas):
        raise UserError(f"probes.etas must be positive multiples of the lr; got {list(cfg.probes.etas)}")
    for key in ("probes.every", "probes.points", "probes.activation_batch", "probes.sharpness_iters",
                "probes.density_vectors", "probes.density_steps"):
        if _get(cfg, key) <= 0:
            raise UserError(f"config key '{key}' must be positive; got {_get(cfg, key)}")
    if cfg.probes.schedule == "list" and cfg.probes.enabled and not cfg.probes.steps:
        raise UserError("probes.schedule=list needs probes.steps, e.g. --set probes.steps=[1,100,1000]")
    if not cfg.name or "/" in cfg.name or "\0" in cfg.name or cfg.name in (".", "..") or len(cfg.name.encode()) > 200:
        raise UserError(f"name must be a plain directory name of at most 200 bytes; got {short(cfg.name)}")


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON records."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def from_dict(d: dict) -> Config:
    """Inverse of :func:`to_dict` (used to read a run's saved config)."""
    return build_config([d])


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
