"""Probes of the loss landscape and of internal covariate shift, for any ``nn.Module``.

A ``batch`` is ``(inputs, targets)``; ``loss_fn(outputs, targets)`` returns a scalar.
Inputs may be a tensor, a tuple of positional arguments or a dict of keyword arguments;
a model returning a tuple, dict or object with ``.logits`` has its first tensor / logits
passed to the loss (``output_fn=`` picks another). Every probe is pure: it leaves
parameters, ``.grad``, buffers, optimizer state and RNG state exactly as it found them.

The probe table (:mod:`landscape.probes.entries`) names every probe ``Monitor`` can schedule;
``register(Probe(...))`` adds one.
"""

from landscape.probes.curvature import (CurvatureResult, DensityResult, LayerSharpnessResult, TraceResult,
                                        UnreadableOptimizer, directional_curvature, hessian_trace, layer_sharpness,
                                        preconditioner, spectral_density, stability_threshold)
from landscape.probes.entries import DEFAULT_ETA_MULTIPLES, Context, Probe, register, unregister
from landscape.probes.functional import resolve_layers
from landscape.probes.ics import ActivationStats, IcsResult, activation_stats, distribution_shift, ics_opti
from landscape.probes.landscape import SharpnessResult, SweepResult, gradient_sweep, sharpness
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every, explicit, log_spaced, mixed

__all__ = ["gradient_sweep", "sharpness", "ics_opti", "activation_stats", "distribution_shift", "Monitor",
           "SweepResult", "SharpnessResult", "IcsResult", "ActivationStats", "resolve_layers", "every",
           "log_spaced", "explicit", "mixed", "DEFAULT_ETA_MULTIPLES", "directional_curvature",
           "layer_sharpness", "hessian_trace", "spectral_density", "preconditioner", "stability_threshold",
           "UnreadableOptimizer", "CurvatureResult", "LayerSharpnessResult", "TraceResult", "DensityResult",
           "Probe", "Context", "register", "unregister"]
