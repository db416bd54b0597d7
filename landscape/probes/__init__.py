"""Probes of the loss landscape and of internal covariate shift, for any ``nn.Module``.

A ``batch`` is ``(inputs, targets)``; ``loss_fn(outputs, targets)`` returns a scalar.
Inputs may be a tensor, a tuple of positional arguments or a dict of keyword arguments;
a model returning a tuple, dict or object with ``.logits`` has its first tensor / logits
passed to the loss (``output_fn=`` picks another). Every probe is pure: it leaves
parameters, ``.grad``, buffers, optimizer state and RNG state exactly as it found them.

Each probe is a function named for it, with its options and its entry in the probe table in one
module; ``Monitor`` schedules any registered probe, and ``register(Probe(...))`` adds one
(docs/probes.md). This package imports nothing from the rest of landscape.
"""

# Import order: the probe modules register their entries as they load.
from landscape.probes.activations import ActivationHessianResult, activation_hessian
from landscape.probes.edge import BatchSharpnessResult, EigenResult, batch_sharpness, edge_eigenvalues
from landscape.probes.functional import evaluation, resolve_layers
from landscape.probes.gradients import LayerGradNormResult, layer_grad_norm
from landscape.probes.hessian import (
    CurvatureResult,
    DensityResult,
    LayerSharpnessResult,
    SharpnessResult,
    TraceResult,
    curvature,
    hessian_trace,
    layer_sharpness,
    preconditioned_sharpness,
    sharpness,
    spectral_density,
)
from landscape.probes.ics import ActivationStats, IcsResult, activation_stats, distribution_shift, ics_opti
from landscape.probes.monitor import Monitor
from landscape.probes.optimizer import UnreadableOptimizer, preconditioner, stability_threshold, update_direction
from landscape.probes.registry import Context, NoOptions, Probe, quantity, register, unregister
from landscape.probes.scale import EffectiveLrResult, effective_lr
from landscape.probes.schedules import every, explicit, log_spaced, mixed
from landscape.probes.slices import loss_slice
from landscape.probes.sweeps import DEFAULT_ETA_MULTIPLES, SweepResult, gradient_sweep
from landscape.probes.theory import BnCurvatureResult, BnGradientResult, bn_curvature, bn_gradient
from landscape.probes.update import critical_sharpness, update_sweep

directional_curvature = curvature  # 0.3's names, read until 0.5
hessian_eigenvalues_above = edge_eigenvalues

__all__ = [
    # the probes: one function per probe, named for it
    "gradient_sweep",  # loss variation, gradient predictiveness, beta_eff along the gradient (Figure 4)
    "update_sweep",  # the same along the optimizer's own next update, and Cockpit's alpha
    "critical_sharpness",  # 2 / eta_c: the lr at which the next update stops lowering the loss (forward passes only)
    "sharpness",  # the top eigenvalue of the Hessian H
    "preconditioned_sharpness",  # the top eigenvalue of P^-1 H, P the optimizer's preconditioner (Adam's)
    "curvature",  # g'Hg / g'g
    "layer_sharpness",  # per layer, the top eigenvalue of its diagonal Hessian block
    "hessian_trace",  # Hutchinson / Hutch++
    "spectral_density",  # stochastic Lanczos quadrature
    "batch_sharpness",  # the mean over minibatches of g_B'H_B g_B / g_B'g_B
    "edge_eigenvalues",  # every eigenvalue above a fraction of the stability threshold
    "ics_opti",  # ||G - G'|| and cos(G, G') per layer (Figure 3)
    "activation_stats",  # each layer's input distribution (Figure 2), and distribution_shift between two
    "distribution_shift",
    "layer_grad_norm",  # the gradient's norm per layer
    "loss_slice",  # the loss along a filter-normalised random direction
    "activation_hessian",  # per layer, the Hessian with respect to its output: gradient norm, curvature, top eigenvalue
    "bn_gradient",  # Theorem 4.1's terms at each BatchNorm layer
    "bn_curvature",  # Theorem 4.2's terms at each BatchNorm layer
    "effective_lr",  # per layer: weight norm, the update's angle, the effective lr, scale invariance
    # their results
    "SweepResult",
    "SharpnessResult",
    "CurvatureResult",
    "LayerSharpnessResult",
    "TraceResult",
    "DensityResult",
    "BatchSharpnessResult",
    "EigenResult",
    "IcsResult",
    "ActivationStats",
    "LayerGradNormResult",
    "ActivationHessianResult",
    "BnGradientResult",
    "BnCurvatureResult",
    "EffectiveLrResult",
    # running probes in a training loop, on a schedule
    "Monitor",
    "every",
    "log_spaced",
    "explicit",
    "mixed",
    # the probe table: adding a probe
    "Probe",
    "Context",
    "NoOptions",
    "register",
    "unregister",
    "quantity",
    # the optimizer, as the probes read it
    "stability_threshold",
    "preconditioner",
    "update_direction",
    "UnreadableOptimizer",
    # settings and helpers
    "evaluation",
    "resolve_layers",
    "DEFAULT_ETA_MULTIPLES",
]
