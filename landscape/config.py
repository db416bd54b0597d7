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
from typing import Annotated, Any, Literal

import yaml

from landscape.data import DATASETS
from landscape.errors import UserError, quote
from landscape.files import read_text
from landscape.losses import CLASSIFICATION, LOSSES
from landscape.models import (
    ACTIVATIONS,
    ALL_NORMS,
    ARCH_NORMS,
    HEADS,
    IMAGE_ARCHS,
    INITS,
    NOISE_FORMS,
    NORM_POSITIONS,
    RESNET_DEPTHS,
    VGG_DEPTHS,
)
from landscape.optimizers import OPTIMIZERS
from landscape.outputs import OUTPUT_NAMES
from landscape.probes import legacy, registry
from landscape.probes.schedules import SCHEDULES


@dataclass(frozen=True)
class Range:
    """A number's allowed interval, checked where the value is read (``Annotated[int, Range(1)]``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    hi_open: bool = False

    def holds(self, x: float) -> bool:
        return (self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)) and (
            self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        )

    def why(self, x: float) -> str:
        """What ``x`` breaks, in words: "must be positive", "must be at most 1e+09", ..."""
        low = self.lo is not None and not (x > self.lo if self.lo_open else x >= self.lo)
        if low and self.hi is None or (low and self.hi is not None and self.hi >= 1e6):
            if (self.lo == 1 and not self.lo_open) or (self.lo == 0 and self.lo_open):
                return "must be positive"
            if self.lo == 0:
                return "must be >= 0"
            return f"must be {'above' if self.lo_open else 'at least'} {self.lo:g}"
        if not low and self.lo is not None and self.hi is not None and self.hi >= 1e6 and self.lo not in (0, 1):
            return f"must be at most {self.hi:g}"
        if not low and self.hi is not None and self.hi >= 1e6:
            return f"must be {'below' if self.hi_open else 'at most'} {self.hi:g}"
        return (
            f"must be in {'(' if self.lo_open else '['}{'-inf' if self.lo is None else f'{self.lo:g}'}, "
            f"{'inf' if self.hi is None else f'{self.hi:g}'}{')' if self.hi_open else ']'}"
        )


MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
MAX_LR = 1e9  # larger learning rates overflow float32 arithmetic at the first step instead of diverging
Count = Annotated[int, Range(1, 10**9)]  # a positive count (sizes, steps, budgets)
Size = Annotated[int, Range(0, 10**9)]  # a count where 0 means "all" or "never"
Seed = Annotated[int, Range(0, MAX_SEED)]
NonNegative = Annotated[float, Range(0)]
Unit = Annotated[float, Range(0, 1, hi_open=True)]  # in [0, 1)


@dataclass(frozen=True)
class DataConfig:
    # cifar10 | cifar100 | mnist | fashion_mnist | svhn (torchvision's) | folder (train/<class>/, test/<class>/
    # images of any size, grayscale or colour, in --data-dir) | synthetic (generated images, for tests) |
    # gaussian (DLN regression)
    dataset: Literal[DATASETS] = "cifar10"
    image_size: Annotated[int, Range(8, 1024)] = (
        32  # side images are resized to (not CIFAR-10): MNIST's 28x28 become 32x32 for VGG's 5 poolings (VGG, ResNet:
        # at least 32)
    )
    batch_size: Size = 128  # examples per step; 0 = the whole training set (full-batch gradient descent)
    augment: bool = False  # random crop with 4-pixel padding + horizontal flip (off in the paper)
    normalize: Literal["channel", "pixel"] = (
        # images: per-channel mean/std (CIFAR-10's published ones) | pixel: every pixel centred and standardised over
        # the training split (Cohen et al.)
        "channel"
    )
    train_subset: Size = 0  # train on a fixed random subset of N examples, the same for every run (0 = all)
    test_subset: Size = 0  # evaluate on a fixed random subset of N test examples (0 = all)
    synthetic_size: Annotated[int, Range(1, 10**7)] = 256  # examples per split for dataset=synthetic
    gaussian_samples: Annotated[int, Range(1, 10**8)] = 1000  # examples for dataset=gaussian; x ~ N(0, I), y = A x
    gaussian_dim: Annotated[int, Range(1, 10**4)] = 10  # input and output dimension for dataset=gaussian
    gaussian_seed: Seed = 0  # seed of the fixed Gaussian matrix A and of the inputs


@dataclass(frozen=True)
class NoiseConfig:
    """Noise injected after each BatchNorm by norm=noisy_batch (the paper's Appendix A.2.1, Algorithm 1)."""

    form: Literal[NOISE_FORMS] = (
        "per_unit"  # per_unit: the paper's Algorithm 1 | per_layer: landscape 0.1's form (see NoisyBatchNorm)
    )
    mean_range: tuple[float, float] = (-0.5, 0.5)  # mu_j ~ U(lo, hi), per unit (channel) j and step
    scale_range: tuple[float, float] = (1.0, 1.25)  # sigma_j ~ U(lo, hi), per unit j and step
    mean_spread: NonNegative = 0.1  # m[i,j] ~ U(mu_j - spread, mu_j + spread), per activation i (sample, position)
    scale_std: NonNegative = 0.1  # s[i,j] ~ N(sigma_j, scale_std**2), per activation i


@dataclass(frozen=True)
class VggConfig:
    """``model.vgg``: the VGG networks of the paper (conv -> norm -> ReLU, five poolings)."""

    depth: Literal[VGG_DEPTHS] = 11  # VGG configuration: 11 | 13 | 16 | 19
    width: Annotated[float, Range(0, 64, lo_open=True)] = (
        1.0  # channel multiplier: 0.25 gives 16..128 channels instead of 64..512
    )
    head: Literal[HEADS] = "linear"  # linear (one layer) | mlp (512-512-10, scaled by width)


@dataclass(frozen=True)
class DlnConfig:
    """``model.dln``: the deep linear network of the paper's Figures 3-4."""

    depth: Annotated[int, Range(1, 10**4)] = 25  # number of linear layers
    width: Annotated[int, Range(1, 10**5)] = 10  # width of every hidden layer


@dataclass(frozen=True)
class VitConfig:
    """``model.vit``: a small Vision Transformer (pre-norm blocks, a class token)."""

    patch: Annotated[int, Range(1, 1024)] = 4  # patch size (32x32 images in 4x4 patches: 64 tokens and a class token)
    dim: Annotated[int, Range(1, 10**5)] = 64  # token width
    depth: Annotated[int, Range(1, 10**4)] = 4  # pre-norm blocks
    heads: Annotated[int, Range(1, 10**4)] = 4  # attention heads (dim divisible by it)
    mlp_ratio: Annotated[float, Range(0, 1000, lo_open=True)] = 2.0  # MLP hidden width / token width
    attention: Literal["explicit", "sdpa"] = (
        # explicit softmax(QK^T/sqrt(d))V (exact Hessian-vector products) | sdpa: PyTorch's fused
        # scaled_dot_product_attention (no double backward on the CPU: curvature probes take finite differences)
        "explicit"
    )
    dropout: Unit = 0.0  # dropout on attention weights, MLP and embeddings


@dataclass(frozen=True)
class MlpConfig:
    """``model.mlp``: a fully connected network on flattened images (Cohen et al.'s fc nets)."""

    widths: tuple[Annotated[int, Range(1, 10**6)], ...] = (200, 200)  # hidden widths (Cohen et al.'s: 200, 200)
    activation: Literal[tuple(ACTIVATIONS)] = "tanh"  # tanh | relu | elu | sigmoid
    norm_position: Literal[NORM_POSITIONS] = (
        "after"  # after: linear -> activation -> norm (Cohen et al.'s fc-*-bn) | before: linear -> norm -> activation
    )


@dataclass(frozen=True)
class ResnetConfig:
    """``model.resnet``: the CIFAR ResNets of He et al. (widths 16-32-64)."""

    depth: Literal[RESNET_DEPTHS] = 20  # depth 6n + 2: 8 | 20 | 32 | 56 | 110


@dataclass(frozen=True)
class ModelConfig:
    """``model``: which architecture, its normalisation and initialisation; each architecture's own
    settings are its section (``model.vgg.width``, ``model.vit.dim``, ...), read only when it is chosen."""

    arch: Literal[tuple(ARCH_NORMS)] = (
        # vgg | dln (deep linear network) | vit (a small Vision Transformer) | mlp (fully connected, on flattened
        # images) | resnet (CIFAR ResNet)
        "vgg"
    )
    norm: Literal[ALL_NORMS] = (
        # vgg, dln: none | batch | noisy_batch | l1 | l2 | linf (conv -> norm -> ReLU); vit: none | layer | rms | batch
        # | dyt; mlp: none | batch | noisy_batch; resnet: none | batch
        "none"
    )
    init: Literal[INITS] = (
        # xavier (Glorot uniform, the paper) | kaiming | lecun_normal (Gaussian, variance 1/fan-in) | torch_default |
        # fixup (resnet with norm none: Fixup)
        "xavier"
    )
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # vgg, dln, mlp with norm noisy_batch
    vgg: VggConfig = field(default_factory=VggConfig)
    dln: DlnConfig = field(default_factory=DlnConfig)
    vit: VitConfig = field(default_factory=VitConfig)
    mlp: MlpConfig = field(default_factory=MlpConfig)
    resnet: ResnetConfig = field(default_factory=ResnetConfig)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal[OPTIMIZERS] = "sgd"  # sgd (the paper) | adam | adamw
    lr: Annotated[float, Range(0, MAX_LR, lo_open=True)] = 0.1  # constant learning rate
    momentum: Unit = 0.0  # SGD momentum (0 in the paper)
    nesterov: bool = False  # SGD: Nesterov momentum
    weight_decay: NonNegative = 0.0  # L2 weight decay (0 in the paper); decoupled for adamw
    betas: tuple[Unit, Unit] = (0.9, 0.999)  # adam/adamw: decay rates of the first and second moments
    eps: Annotated[float, Range(0, lo_open=True)] = (
        1e-8  # adam/adamw: added to sqrt(second moment) in the preconditioner
    )


@dataclass(frozen=True)
class LogConfig:
    train_every: Count = 50  # steps between train loss/accuracy records (means over the interval)
    eval_every: Size = 500  # steps between test-set evaluations (0 = only at the end)
    checkpoint_every: Count = 500  # steps between checkpoints (the last step is always saved)


@dataclass(frozen=True)
class ProbeConfig:
    """``probes:``: which probes run, when, and on what. Each registered probe's own options are a
    section beside these, ``probes.<name>`` (e.g. ``probes.sharpness.iters``): its entry's options
    dataclass (:mod:`landscape.probes.registry`). A config holds an instance of the subclass
    :func:`probe_config_class` makes with one such field per probe in the table."""

    enabled: tuple[str, ...] = ()  # names of probe entries (landscape.probes.registry): gradient_sweep, sharpness, ...
    schedule: Literal[SCHEDULES] = (
        "every"  # every (N steps) | log (log-spaced) | list (explicit steps) | mixed (log + every)
    )
    every: Count = 100  # schedule=every or mixed: probe at step 1 and every N steps
    points: Count = 20  # schedule=log or mixed: about this many steps, evenly spaced in log(step)
    steps: tuple[Count, ...] = ()  # schedule=list: probe at exactly these steps
    layers: tuple[str, ...] = ()  # module names for per-layer probes (empty: every module owning parameters)
    eval_mode: bool = False  # probe in eval mode (running statistics) instead of the training mode

    def __reduce__(self):  # pickled as values (multiprocessing, Ray): the class is remade from the probe table
        return _probe_config, (to_dict(self),)


_PROBE_CLASSES: dict[tuple, type] = {}


def probe_config_class() -> type[ProbeConfig]:
    """:class:`ProbeConfig` plus one section per registered probe, each its entry's options dataclass
    (made again when the probe table changes, so a probe registered later is configurable too)."""
    key = tuple((p.name, p.options) for p in (registry.get(n) for n in registry.names()))
    if key not in _PROBE_CLASSES:
        fields = [(name, cls, field(default_factory=cls)) for name, cls in key]
        made = dataclasses.make_dataclass("ProbeConfig", fields, bases=(ProbeConfig,), frozen=True)
        made.__module__ = __name__
        _PROBE_CLASSES[key] = made
    return _PROBE_CLASSES[key]


def _probe_config(values: dict) -> ProbeConfig:
    return _merge(probe_config_class()(), values, "probes.")


@dataclass(frozen=True)
class Config:
    name: str = "run"  # run directory name under --out
    steps: Count = 15000  # optimizer updates (15,000 x batch 128 is ~38 CIFAR-10 epochs)
    seed: Seed = 0  # model initialisation
    data_seed: Seed = 0  # batch order and augmentation; equal across compared runs pairs them
    noise_seed: Seed = 0  # noisy-BN noise
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    threads: Annotated[int, Range(0, 4096)] = 0  # CPU threads for the run (0: PyTorch's default; 1 suits tiny models)
    # auto: channels-last tensors wherever the model has a convolution, on the CPU too (VGG-11 x0.25 trains 1.56x
    # faster on an AVX2 CPU); a resumed run keeps the format it started in | channels_last: every image model |
    # contiguous: everywhere (release 0.3's CPU kernels: its records' last bits, and so its trajectories)
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    loss: Literal[tuple(LOSSES)] = (
        # cross_entropy | square_onehot (half ||f(x) - onehot(y)||^2, mean over samples: Cohen et al.'s square loss) |
        # sum_squares (sum over samples of ||f(x) - y||^2) | mean_squares (its mean over samples) | mse (mean over
        # samples and outputs)
        "cross_entropy"
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    outputs: tuple[
        Literal[OUTPUT_NAMES], ...
    ] = ()  # also write scalars to: tensorboard (<run>/tensorboard) | wandb (offline, <run>/wandb)
    probes: ProbeConfig = field(default_factory=lambda: probe_config_class()())  # see probe_config_class


def _fields(node: Any) -> dict[str, Any]:
    """A config node's fields and their types; ``node`` is a dataclass or an instance of one
    (an instance knows its own ProbeConfig class, with the probes registered when it was made)."""
    cls = node if isinstance(node, type) else type(node)
    hints = typing.get_type_hints(cls, include_extras=True)
    if not isinstance(node, type):
        hints.update(
            {
                f.name: type(getattr(node, f.name))
                for f in dataclasses.fields(node)
                if dataclasses.is_dataclass(getattr(node, f.name))
            }
        )
    return hints


def field_paths(node: Any = None, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the tree (``optim.lr``, ``probes.sharpness.iters``, ...) mapped to its type."""
    node = Config() if node is None else node
    out: dict[str, Any] = {}
    for name, tp in _fields(node).items():
        child = getattr(node, name) if not isinstance(node, type) else tp
        if dataclasses.is_dataclass(child):
            out.update(field_paths(child, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def short(value: Any, limit: int = 80) -> str:
    """A value as it goes into an error message: bounded, however large the value (a YAML alias bomb)."""
    r = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12
    r.maxlevel, r.maxstring, r.maxother, r.maxlong = 3, limit, limit, limit
    try:
        text = r.repr(value)
    except (ValueError, RecursionError):  # an integer of more digits than Python prints, nesting too deep
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    def bad(expected: str) -> UserError:
        return UserError(f"config key '{key}' expects {expected}, got {short(value)}")

    if typing.get_origin(tp) is Annotated:
        base, *marks = typing.get_args(tp)
        value = _coerce(value, base, key)
        for mark in marks:
            if isinstance(mark, Range) and not mark.holds(value):
                raise UserError(f"config key '{key}' {mark.why(value)}; got {short(value)}")
        return value
    if typing.get_origin(tp) is Literal:
        allowed = typing.get_args(tp)
        kind = type(allowed[0])
        if isinstance(value, bool) != (kind is bool) or value not in allowed or not isinstance(value, kind):
            raise UserError(f"config key '{key}' must be one of {_choices(allowed)}; got {short(value)}")
        return value
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
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            raise bad("a finite number") from None
        if not math.isfinite(value):
            raise bad("a finite number")
        return value
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


def _merge(base: Any, updates: Any, prefix: str) -> Any:
    if not isinstance(updates, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or 'top'}' must be a mapping, got {short(updates)}")
    if prefix == "probes.":
        updates = legacy.upgrade_probe_settings(updates)  # a run directory of landscape 0.2 (flat probe settings)
        if isinstance(updates.get("sharpness"), dict) and "raw" in updates["sharpness"]:
            raise UserError(
                "probes.sharpness.raw is landscape 0.3's: sharpness is now always the raw Hessian's top "
                "eigenvalue; enable preconditioned_sharpness for that of P^-1 H under Adam"
            )
    elif prefix == "model.":
        updates = legacy.upgrade_model_settings(updates)  # a run directory of landscape 0.3 (flat model settings)
    hints = _fields(base)
    changes = {}
    for key, value in updates.items():
        if key not in hints:
            raise UserError(_unknown_key(base, prefix, key))
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(base, **changes)


def _unknown_key(base: Any, prefix: str, key: Any) -> str:
    """One line for an unknown key: the closest valid keys first (``step`` -> ``steps``), then where to find them
    all; a section short enough to read is listed whole."""
    import difflib

    name = f"{prefix}{key}" if isinstance(key, str) else f"{prefix}{short(key)}"
    valid = sorted(field_paths(base, prefix))
    close = []
    if isinstance(key, str):  # a sibling of a similar name ("step": "steps"), judged on the names alone
        depth = name.count(".")  # keys and sections at the unknown key's depth ("probes.sharpnes": a section)
        here = {
            ".".join(v.split(".")[: depth + 1]).rsplit(".", 1)[-1]: ".".join(v.split(".")[: depth + 1])
            for v in valid
            if v.count(".") >= depth
        }
        close = [here[k] for k in difflib.get_close_matches(key, list(here), n=3, cutoff=0.6)]
        # the same or a close name under another section ("lr": "optim.lr")
        near = set(difflib.get_close_matches(key, [v.rsplit(".", 1)[-1] for v in valid], n=3, cutoff=0.75))
        close += sorted((v for v in valid if v.rsplit(".", 1)[-1] in near), key=lambda v: (v.count("."), v))
    close = list(dict.fromkeys(close))
    head = f"unknown config key '{name}'"[:200]
    if close:
        return f"{head}; did you mean {' or '.join(repr(c) for c in close[:3])}? (landscape keys lists every key)"
    if len(valid) <= 12:
        return f"{head}; valid keys: {', '.join(valid)}"
    return f"{head}; {len(valid)} keys are valid here: landscape keys lists them"


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
    except (RecursionError, ValueError):  # nested too deep; an integer of more digits than Python reads
        raise UserError(
            f"--set {key}: the value cannot be read (nested too deep or a number too long); pass a plain value"
        ) from None
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def safe_yaml(text: str) -> Any:
    """YAML through the safe loader; raises yaml.YAMLError, RecursionError or ValueError on what it cannot read."""
    return yaml.safe_load(text)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"config file {quote(path)} not found (or not a regular file); pass a YAML file such as configs/vgg_bn.yaml"
        )
    try:
        loaded = safe_yaml(read_text(path))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"config file '{path}' is not valid YAML ({first}); fix the file") from None
    except OSError as exc:
        raise UserError(f"config file '{path}' cannot be read ({exc.strerror or exc}); check its permissions") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def build_config(updates: list[dict] = (), base: Config | None = None) -> Config:
    """Apply each mapping of updates in order to ``base`` (defaults) and validate."""
    cfg = base or Config()
    for update in updates:
        cfg = _merge(cfg, update, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Defaults, then the YAML file, then each ``--set key=value`` in order."""
    updates = [read_yaml(path)] if path is not None else []
    updates += [parse_override(o) for o in overrides]
    return build_config(updates, base)


def validate(cfg: Config) -> None:
    """Rules that tie fields together (each field's own type, choices and range are checked as it is read)."""
    m, o, d, p = cfg.model, cfg.optim, cfg.data, cfg.probes
    if o.nesterov and (o.name != "sgd" or o.momentum == 0):
        raise UserError("optim.nesterov needs optim.name=sgd and optim.momentum > 0")
    if o.name != "sgd" and o.momentum:
        raise UserError(f"optim.momentum is SGD's; optim.name={o.name} takes optim.betas instead")
    if m.norm not in ARCH_NORMS[m.arch]:
        raise UserError(
            f"model.norm={m.norm} is not one for model.arch={m.arch}; choose one of {', '.join(ARCH_NORMS[m.arch])}"
        )
    if m.arch == "vit":
        if m.vit.dim % m.vit.heads:
            raise UserError(f"model.vit.dim ({m.vit.dim}) must be divisible by model.vit.heads ({m.vit.heads})")
        side = 32 if d.dataset in ("cifar10", "synthetic") else d.image_size
        if side % m.vit.patch:
            raise UserError(f"model.vit.patch must divide the image size {side}; got {m.vit.patch}")
    if d.dataset in ("cifar10", "synthetic") and d.image_size != 32:
        raise UserError(
            f"data.image_size resizes the other data sets; {d.dataset}'s images are 32x32 as they are "
            f"(got {d.image_size}): leave it at 32"
        )
    if m.arch in ("vgg", "resnet") and d.dataset not in ("cifar10", "synthetic") and d.image_size < 32:
        raise UserError(
            f"model.arch={m.arch} needs data.image_size of at least 32 (it pools to 1x1); got {d.image_size}"
        )
    image = d.dataset != "gaussian"
    if image != (m.arch in IMAGE_ARCHS):
        raise UserError(
            f"model.arch={m.arch} does not fit data.dataset={d.dataset}; "
            f"use {', '.join(IMAGE_ARCHS)} with image data sets and dln with gaussian"
        )
    if m.init == "fixup" and (m.arch != "resnet" or m.norm != "none"):
        raise UserError("model.init=fixup is for the unnormalised ResNet: model.arch=resnet and model.norm=none")
    if m.arch == "mlp" and not m.mlp.widths:
        raise UserError("model.mlp.widths must list at least one hidden width, e.g. [200, 200]")
    if image != (cfg.loss in CLASSIFICATION):
        raise UserError(
            f"loss={cfg.loss} does not fit data.dataset={d.dataset}: image data sets are classified "
            "(loss=cross_entropy or square_onehot), the gaussian one is regression (sum_squares, mean_squares or mse)"
        )
    for key, (lo, hi) in (
        ("model.noise.mean_range", m.noise.mean_range),
        ("model.noise.scale_range", m.noise.scale_range),
    ):
        if lo > hi:
            raise UserError(f"config key '{key}' must be [low, high] with low <= high; got [{lo}, {hi}]")
    from landscape.extras import require

    for name in cfg.outputs:
        require(name, f"outputs: [{name}]")
    unknown = [n for n in p.enabled if n not in registry.REGISTRY]
    if unknown:
        raise UserError(
            f"unknown probe '{short(unknown[0])}' in probes.enabled; choose from {', '.join(registry.names())}"
        )
    for probe in registry.REGISTRY.values():
        problem = probe.check(getattr(p, probe.name)) if probe.check and hasattr(p, probe.name) else None
        if problem:
            raise UserError(f"probes.{probe.name}: {problem}")
    if p.schedule == "list" and p.enabled and not p.steps:
        raise UserError("probes.schedule=list needs probes.steps, e.g. --set probes.steps=[1,100,1000]")
    if (
        not cfg.name
        or "/" in cfg.name
        or "\0" in cfg.name
        or cfg.name in (".", "..")
        or len(cfg.name.encode(errors="surrogateescape")) > 200
        or not cfg.name.isprintable()
    ):
        raise UserError(f"name must be a plain, printable directory name of at most 200 bytes; got {short(cfg.name)}")
    try:
        cfg.name.encode()
    except UnicodeEncodeError:
        raise UserError(f"name must be valid UTF-8; got {short(cfg.name)}") from None


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
    """Inverse of :func:`to_dict` (used to read a run's saved config, one of an earlier release too)."""
    return build_config([legacy.upgrade_config(d) if isinstance(d, dict) else d])


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
