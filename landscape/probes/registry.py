"""The probe table: one :class:`Probe` entry per probe, what a probe sees (:class:`Context`), and
how every other part of landscape reads a probe's records (its declared quantities).

An entry says everything the rest of landscape needs of a probe:

- ``measure(ctx, options) -> values``: the measurement at one step (a :class:`Context` holds the
  model, loss, batch and the state of that step; ``options`` is the probe's own settings);
- ``options``: a frozen dataclass of those settings, with commented defaults. It is the config
  section ``probes.<name>`` (``probes.sharpness.iters``), ``Monitor(..., options={name: {...}})``
  and the ``monitor.yaml`` of a run;
- ``quantities``: named numbers read off one record's values (``loss_band``, ``ics_cos`` per
  layer, ...). Results, claims, figures and exports read recorded probes only through them
  (:func:`quantity`); ``exported`` names those that are also written as scalars (TensorBoard,
  W&B: ``landscape/<name>``, a per-layer quantity as ``landscape/<name>/<layer>``);
- ``views``: named structured reads of a record (a histogram, the list of layers, the losses along
  a sweep), for figures that draw more than a number (:func:`view`); a record's raw ``values`` are
  read nowhere else;
- ``after_step``: measured after ``optimizer.step()`` with the new weights (ICS_opti);
- ``attach(optimizer, options)``: a warning to give once when the probe is attached (e.g. an
  optimizer whose stability threshold is unknown), or None;
- ``fixed_batch(options)``: the size of a fixed training batch the probe measures every time
  instead of the step's own (activation statistics), or None;
- ``check(options)``: what is wrong with a set of options, or None.

Each probe lives in one module with its function, options and entry (``sweeps``, ``hessian``,
``edge``, ``ics``, ``update``, ``slices``, ``gradients``, ``activations``, ``theory``, ``scale``); adding one
is a module that calls :func:`register` (docs/probes.md).
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from landscape.probes.functional import Batch, Params, take

# The order probes run in within a step, and so the order of their records: the paper's probes first.
BUILTIN_ORDER = (
    "gradient_sweep",
    "sharpness",
    "preconditioned_sharpness",
    "curvature",
    "layer_sharpness",
    "hessian_trace",
    "spectral_density",
    "activation_stats",
    "loss_slice",
    "ics_opti",
    "layer_grad_norm",
    "update_sweep",
    "critical_sharpness",
    "batch_sharpness",
    "edge_eigenvalues",
    "activation_hessian",
    "bn_gradient",
    "bn_curvature",
    "effective_lr",
)


@dataclass
class Context:
    """What a probe sees at one step: the model as the training step left it (after backward,
    before the update), the step's batch, and the buffers and RNG state of its forward."""

    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    batch: Batch
    buffers: Params
    rng: dict
    grad: Params | None = None  # the step's own gradient (reused when it is exactly this forward's)
    loss: Any = None  # the step's own loss, with ``grad``
    layers: Any = None  # the Monitor's layer selection (see landscape.probes.resolve_layers)
    eval_mode: bool = False
    output_fn: Callable | None = None
    fixed_batch: Batch | None = None  # the Monitor's fixed probe batch, for probes that ask for one
    state: dict = field(default_factory=dict)  # this probe's own state between its steps (checkpointed)
    params: Params | None = None  # after-step probes: the weights before the update (W^t)
    next_params: Params | None = None  # after-step probes: the weights after it (W^{t+1})

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def common(self) -> dict:
        """The keyword arguments every probe function takes for the step's state."""
        return {"eval_mode": self.eval_mode, "buffers": self.buffers, "rng": self.rng, "output_fn": self.output_fn}

    def reuse(self) -> dict:
        """The step's own gradient and loss as a probe function's ``grad=``/``loss=`` (empty when it has none)."""
        if not self.grad:
            return {}
        return {"grad": self.grad, "loss": self.loss.detach() if torch.is_tensor(self.loss) else self.loss}

    def fixed_part(self, n: int) -> Batch:
        """The first ``n`` examples of the fixed probe batch (``n`` = 0, or no fixed batch: the step's own)."""
        if not n or self.fixed_batch is None:
            return self.batch
        return take(self.fixed_batch, 0, n)


@dataclass(frozen=True)
class Probe:
    name: str
    doc: str  # one line: what it measures
    measure: Callable[[Context, Any], dict]
    options: type  # a frozen dataclass; its instance is the probe's settings
    quantities: dict[str, Callable[[dict], Any]] = field(default_factory=dict)  # values -> a number or {layer: number}
    exported: tuple[str, ...] = ()  # the quantities also written as scalars
    views: dict[str, Callable[[dict], Any]] = field(
        default_factory=dict
    )  # values -> structured data (lists, histograms)
    after_step: bool = False
    attach: Callable[[torch.optim.Optimizer, Any], str | None] | None = None
    fixed_batch: Callable[[Any], int | None] | None = None
    check: Callable[[Any], str | None] | None = None  # options -> what is wrong with them, or None
    sharded: bool = False  # measured right under FSDP2 (sharded vectors, inner products over ranks): tested


@dataclass(frozen=True)
class NoOptions:
    """The options of a probe that has none."""


REGISTRY: dict[str, Probe] = {}


def register(probe: Probe, replace: bool = False) -> Probe:
    """Add ``probe`` to the table (``replace``: put it in place of the entry of the same name)."""
    problem = _entry_problem(probe)
    if problem:
        raise ValueError(f"cannot register probe {probe.name!r}: {problem}")
    if probe.name in REGISTRY and not replace:
        raise ValueError(
            f"a probe named {probe.name!r} is already registered; pick another name, or pass "
            "replace=True to put yours in its place"
        )
    REGISTRY[probe.name] = probe
    return probe


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered probe, in the order they run within a step: the built-ins, then the others as registered."""
    order = {n: i for i, n in enumerate(BUILTIN_ORDER)}
    return tuple(sorted(REGISTRY, key=lambda n: order.get(n, len(order))))


def get(name: str) -> Probe:
    if name not in REGISTRY:
        raise ValueError(f"unknown probe '{name}'; choose from {', '.join(names())}")
    return REGISTRY[name]


# ------------------------------------------------------------------ what an entry may hold


MAX_PRODUCTS = 10_000  # Hessian-vector products (or gradients) a probe's options may ask for at one step
MAX_POINTS = 1_000  # points along a sweep or a line
MAX_EXAMPLES = 1_000_000  # examples in a fixed probe batch
OPTION_TYPES = (int, float, bool, str)  # and Literal[...] of them, and tuples of them: what a config file can say


def option_type_ok(tp: Any) -> bool:
    """A type a probe option may have: one a config file and ``--set`` can give (see ``landscape.config``)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return option_type_ok(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return all(isinstance(a, OPTION_TYPES) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return bool(args) and all(a is Ellipsis or option_type_ok(a) for a in args)
    return tp in OPTION_TYPES


def _entry_problem(probe: Probe) -> str | None:
    name = probe.name
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or not name.isascii():
        return (
            "a probe's name is a config key: letters, digits and underscores, not starting with a digit "
            "and not a Python keyword"
        )
    if not callable(probe.measure):
        return "measure must be a function (ctx, options) -> dict"
    cls = probe.options
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        return "options must be a frozen dataclass"
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
        cls()
    except Exception as exc:  # noqa: BLE001 (a user's class: whatever it raises is the reason)
        return f"its options class cannot be built with its defaults ({type(exc).__name__}: {exc})"
    for f in dataclasses.fields(cls):
        if not option_type_ok(hints.get(f.name)):
            return (
                f"option '{f.name}' has type {hints.get(f.name)}; options are what a config file can hold: "
                "int, float, bool, str, a Literal of them, or a tuple of them"
            )
    unknown = [q for q in probe.exported if q not in probe.quantities]
    if unknown:
        return f"exported names {unknown} that are not among its quantities"
    return None


def options_of(name: str, given: Any = None) -> Any:
    """A probe's options: its defaults, updated by a mapping or given as its options dataclass, each value checked
    against its field's type and the set against the entry's own ``check`` (``ValueError`` in one line)."""
    probe = get(name)
    cls = probe.options
    if given is None:
        options = cls()
    elif isinstance(given, cls):
        options = given
    elif isinstance(given, dict):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in given if k not in fields]
        if unknown:
            valid = ", ".join(fields) or "none"
            raise ValueError(f"probe {name} has no option {str(unknown[0])[:60]!r}; its options: {valid}")
        hints = typing.get_type_hints(cls, include_extras=True)
        options = dataclasses.replace(cls(), **{k: coerce_option(v, hints[k], f"{name}.{k}") for k, v in given.items()})
    else:
        raise TypeError(f"options of probe '{name}' must be a mapping or {cls.__name__}, got {type(given).__name__}")
    problem = probe.check(options) if probe.check else None
    if problem:
        raise ValueError(f"probe {name}: {problem}")
    return options


def coerce_option(value: Any, tp: Any, key: str) -> Any:
    """``value`` as an option of type ``tp`` (one of :data:`OPTION_TYPES`, a Literal of them, or a tuple of
    them), or ``ValueError`` naming ``key`` (``"20"`` is not an int: options are checked, not converted)."""

    def bad(expected: str) -> ValueError:
        return ValueError(f"option {key} expects {expected}, got {str(value)[:60]!r}")

    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return coerce_option(value, typing.get_args(tp)[0], key)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise bad("one of " + ", ".join(map(str, allowed)))
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce_option(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise bad(f"a list of {len(args)}")
        return tuple(coerce_option(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def attach_warnings(probes, optimizer: torch.optim.Optimizer, options: dict) -> list[str]:
    """What attaching these probes to this optimizer should say once (one line each)."""
    out = []
    for name in probes:
        probe = get(name)
        if probe.attach is not None:
            msg = probe.attach(optimizer, options.get(name))
            if msg:
                out.append(f"{name}: {msg}")
    return out


def warn_at_attach(probes, optimizer, options: dict, stacklevel: int = 3) -> None:
    for msg in attach_warnings(probes, optimizer, options):
        warnings.warn(msg, stacklevel=stacklevel)


# ------------------------------------------------------------------ reading a record's numbers


def number(x: Any) -> float | None:
    """A finite number, else None (records write non-finite values as null)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def numbers(xs: Any) -> list[float | None] | None:
    """A list of numbers, each None where it is not a finite one; None when ``xs`` is not a list."""
    return [number(x) for x in xs] if isinstance(xs, (list, tuple)) else None


def per_layer(d: Any) -> dict[str, float] | None:
    """``{layer: number}`` with the finite numbers of a per-layer record field (None if it is not a mapping)."""
    if not isinstance(d, dict):
        return None
    return {str(k): v for k, v in ((k, number(x)) for k, x in d.items()) if v is not None}


def quantity(name: str, values: Any, key: str) -> Any:
    """Quantity ``key`` of a ``name`` probe's recorded ``values``: a finite number, ``{layer:
    number}``, or None when the record does not have it in a usable form (a record of the wrong
    shape never raises here)."""
    probe = REGISTRY.get(name)
    fn = probe.quantities.get(key) if probe else None
    if fn is None or not isinstance(values, dict):
        return None
    try:
        out = fn(values)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError):
        return None
    return per_layer(out) if isinstance(out, dict) else number(out)


def view(name: str, values: Any, key: str) -> Any:
    """View ``key`` of a ``name`` probe's recorded ``values`` (see :class:`Probe`), or None when the record does
    not have it in a usable form (a record of the wrong shape never raises here)."""
    probe = REGISTRY.get(name)
    fn = probe.views.get(key) if probe else None
    if fn is None or not isinstance(values, dict):
        return None
    try:
        return fn(values)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError):
        return None


def layer_list(v: dict) -> list[str] | None:
    """A record's ``layers``: the layer names in forward order (a view many per-layer probes share)."""
    layers = v["layers"]
    return [str(x) for x in layers] if isinstance(layers, list) else None


def finite_list(xs: Any) -> list[float]:
    """The finite numbers of a list (nothing else counts)."""
    return [x for x in (numbers(xs) or []) if x is not None]


def scalars(name: str, values: Any) -> dict[str, float]:
    """A probe record's exported scalars, ``{quantity: number}`` and ``{quantity/layer: number}``."""
    probe = REGISTRY.get(name)
    out: dict[str, float] = {}
    for key in probe.exported if probe else ():
        v = quantity(name, values, key)
        if isinstance(v, dict):
            out.update({f"{key}/{layer}": x for layer, x in v.items()})
        elif v is not None:
            out[key] = v
    return out


# Reductions the quantities of several probes share.


def band(xs: Any) -> float | None:
    """max - min of a list when every element is a finite number."""
    vals = numbers(xs)
    return max(vals) - min(vals) if vals and None not in vals else None


def top(xs: Any) -> float | None:
    vals = numbers(xs)
    return max(vals) if vals and None not in vals else None


def mean(xs) -> float | None:
    vals = [v for v in (number(x) for x in xs) if v is not None]
    return sum(vals) / len(vals) if vals else None


def over(value: Any, threshold: Any) -> float | None:
    """``value / threshold`` for two finite numbers and a positive threshold, else None."""
    v, t = number(value), number(threshold)
    return v / t if v is not None and t is not None and t > 0 else None


def mean_over_layers(values: dict, key: str, skip_first: bool = True) -> float | None:
    """Mean of a per-layer value over the recorded layers; ``skip_first`` leaves the first layer
    out (for ICS_opti, G' = G there by definition)."""
    layers = values.get("layers", [])
    by_layer = values.get(key)
    if not isinstance(layers, list) or not isinstance(by_layer, dict):
        return None
    vals = [
        v
        for v in (
            number(by_layer.get(layer)) for layer in (layers[1:] if skip_first else layers) if isinstance(layer, str)
        )
        if v is not None
    ]
    return sum(vals) / len(vals) if vals else None
