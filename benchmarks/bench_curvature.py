"""Curvature benchmarks, in one process, on one model and batch, against baselines measured in the same run.

1. Hessian trace: landscape's Hutchinson and Hutch++ against PyHessian's ``trace()``, as the
   number of Hessian-vector products needed for a 5% RMS error (over seeds) against a reference
   (Hutch++ with a large budget), and the time that costs, on the network after
   ``--trace-steps`` SGD steps (early in training the trace is small against the spread of the
   eigenvalues and no estimator gets near 5% within 192 products: say 30 steps to see that);
2. spectral density: landscape's stochastic Lanczos quadrature against PyHessian's ``density()``
   at the same settings (vectors, steps): time, and the Wasserstein distance between their
   measures relative to the spectrum's range;
3. per-layer sharpness against one full sharpness (same tolerance);
4. warm-started Lanczos: Hessian-vector products per sharpness measurement during a short
   training run, from the previous measurement's eigenvector vs from the gradient (probes
   never change training, so both see the same weights).

    pip install -e .[bench]    # PyHessian 0.1
    python benchmarks/bench_curvature.py --data-dir DATA

Times are medians of ``--repeats``; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import numpy as np
import torch
from common import first_batch, timeit, training_split

from landscape.config import ModelConfig, VggConfig
from landscape.data import Batches
from landscape.models import build_model
from landscape.probes import hessian_trace, layer_sharpness, resolve_layers, sharpness, spectral_density

CE = torch.nn.functional.cross_entropy


def trained_vgg(split, width: float, norm: str, steps: int, seed: int = 0):
    model = build_model(ModelConfig(norm=norm, vgg=VggConfig(width=width)), seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = Batches(split, 128, seed=1)
    for step in range(steps):
        x, y = batches(step)
        opt.zero_grad()
        CE(model(x), y).backward()
        opt.step()
    return model, opt, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--skip-pyhessian", action="store_true")
    ap.add_argument("--parts", default="1,2,3,4", help="which measurements to run, e.g. 2,3")
    ap.add_argument("--trace-steps", type=int, default=1000, help="SGD steps before the trace is measured (parts 1, 5)")
    args = ap.parse_args()
    torch.manual_seed(0)
    split = training_split(args.data_dir)
    batch = first_batch(split, args.batch)
    print(
        f"CPU threads {torch.get_num_threads()}, batch {args.batch}, "
        f"{'CIFAR-10' if args.data_dir else 'generated images'}, VGG-11 x{args.width}, no BN, eval mode"
    )
    model, _, _ = trained_vgg(split, args.width, "none", 30)
    model.eval()  # PyHessian evaluates in eval mode; the same function for both here
    try:
        from pyhessian import hessian
    except ImportError:
        hessian = None
        if not args.skip_pyhessian:
            print("PyHessian not installed: pip install -e .[bench] (its columns are skipped)")

    parts = {int(p) for p in args.parts.split(",")}
    trace_model = model
    if parts & {1, 5} and args.trace_steps != 30:
        trace_model, _, _ = trained_vgg(split, args.width, "none", args.trace_steps)
        trace_model.eval()
    if parts & {1, 5}:
        print(f"Trace parts: the network after {args.trace_steps} SGD steps (lr 0.05)")
    if 1 in parts:
        trace_part(trace_model, batch, hessian, args)
    if 2 in parts:
        density_part(model, batch, hessian, args)
    if 3 in parts:
        layer_part(model, batch, args)
    if 4 in parts:
        warm_start_part(split, args)
    if 5 in parts:
        trace_budget_part(trace_model, batch, hessian, args)


def trace_estimators(model, batch, hessian, args, used: list[int] | None = None) -> dict:
    """``{label: estimate(m, seed)}``: ours (Hutchinson, Hutch++) and, when installed, PyHessian's
    ``trace()``; ``used`` collects how many products PyHessian really took per call."""

    def pyhessian_trace(m: int, seed: int) -> float:
        torch.manual_seed(seed)
        model.zero_grad(set_to_none=True)  # PyHessian backpropagates into .grad: a stale graph there would add up
        samples = hessian(model, CE, data=batch, cuda=False).trace(maxIter=m, tol=0.0)
        if used is not None:  # PyHessian 0.1 divides by (trace + 1e-6), not |trace|: a negative running
            used.append(len(samples))  # mean passes its tolerance test at once and it stops early
        return float(np.mean(samples))

    methods = {
        "hutchinson": lambda m, s: hessian_trace(model, CE, batch, samples=m, seed=s).value,
        "hutch++": lambda m, s: hessian_trace(model, CE, batch, samples=m, method="hutch++", seed=s).value,
    }
    if hessian is not None and not args.skip_pyhessian:
        methods["PyHessian trace()"] = pyhessian_trace
    return methods


def trace_part(model, batch, hessian, args) -> None:
    reference = hessian_trace(model, CE, batch, samples=600, method="hutch++", seed=12345)
    print(f"1. reference trace (Hutch++, 600 products): {reference.value:.2f} +- {reference.stderr:.2f}")

    def rms_error(estimate, m: int) -> float:
        errors = [(estimate(m, s) - reference.value) / reference.value for s in range(args.seeds)]
        return math.sqrt(sum(e * e for e in errors) / len(errors))

    times = {}
    for label, estimate in trace_estimators(model, batch, hessian, args).items():
        for m in (6, 12, 24, 48, 96, 192):
            err = rms_error(estimate, m)
            if err <= 0.05:
                t = timeit(lambda: estimate(m, 0), args.repeats)
                times[label] = t
                print(f"   {label}: {m} products for a 5% RMS error ({err:.3f}), {t:.2f} s")
                break
        else:
            print(f"   {label}: RMS error above 5% at 192 products")
    if "PyHessian trace()" in times:
        for label in ("hutchinson", "hutch++"):
            if label in times:
                print(
                    f"   time to 5%: PyHessian / landscape {label} = {times['PyHessian trace()'] / times[label]:.2f}x"
                )


def trace_budget_part(model, batch, hessian, args, m: int = 96) -> None:
    """The trace at the same budget of ``m`` Hessian-vector products: Hutchinson with Rademacher
    vectors is the same estimator in both libraries (same accuracy per product), so the time per
    estimate is the comparison; the spread over seeds shows the accuracy each reaches."""
    used: list[int] = []
    times = {}
    print(f"5. trace at {m} Hessian-vector products, {args.seeds} seeds:")
    for label, estimate in trace_estimators(model, batch, hessian, args, used).items():
        t0 = time.perf_counter()
        values = [estimate(m, s) for s in range(args.seeds)]
        times[label] = (time.perf_counter() - t0) / args.seeds
        print(
            f"   {label}: mean {statistics.mean(values):.2f}, spread over seeds (std) {statistics.stdev(values):.2f}, "
            f"{times[label]:.2f} s per estimate"
        )
    if "PyHessian trace()" in times:
        per_theirs = times["PyHessian trace()"] / statistics.mean(used)
        print(
            f"   PyHessian used {used} of the {m} products it was given (it stops when its running mean is "
            f"negative); time per product: PyHessian {per_theirs * 1e3:.0f} ms, landscape "
            f"{times['hutchinson'] / m * 1e3:.0f} ms, ratio {per_theirs / (times['hutchinson'] / m):.2f}x"
        )


@contextlib.contextmanager
def eig_shim():
    """``torch.eig(T, eigenvectors=True)`` as PyHessian 0.1 calls it on its symmetric tridiagonal
    Lanczos matrix: eigenvalues as (real, imaginary) columns and the eigenvectors, from
    ``torch.linalg.eigh`` (exact for a symmetric matrix)."""

    def eig(T, eigenvectors=False):
        values, vectors = torch.linalg.eigh(T)
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    had = hasattr(torch, "eig")
    old = getattr(torch, "eig", None)
    torch.eig = eig
    try:
        yield
    finally:
        if had:
            torch.eig = old
        else:
            del torch.eig


def density_part(model, batch, hessian, args) -> None:
    vectors, steps = 1, 40
    ours = spectral_density(model, CE, batch, vectors=vectors, steps=steps, seed=0)
    t_ours = timeit(lambda: spectral_density(model, CE, batch, vectors=vectors, steps=steps, seed=0), args.repeats)
    top = sharpness(model, CE, batch, iters=100, tol=1e-6).value
    print(
        f"2. spectral density, {vectors} vector x {steps} Lanczos steps: landscape {t_ours:.2f} s, "
        f"top node {max(ours.nodes[0]):.3f} (top eigenvalue {top:.3f})"
    )
    if hessian is not None and not args.skip_pyhessian:
        from scipy.stats import wasserstein_distance

        def theirs():
            torch.manual_seed(0)
            model.zero_grad(set_to_none=True)  # PyHessian backpropagates into .grad
            return hessian(model, CE, data=batch, cuda=False).density(iter=steps, n_v=vectors)

        try:
            t_theirs = timeit(theirs, args.repeats)
        except RuntimeError as exc:  # PyHessian 0.1 calls torch.eig, removed in torch 1.9
            print(
                f"   PyHessian density() fails on torch {torch.__version__}: {str(exc).splitlines()[0]}; "
                "measured with torch.eig replaced by torch.linalg.eigh on its tridiagonal matrix (the only change)"
            )
            with eig_shim():
                t_theirs = timeit(theirs, args.repeats)
                nodes, weights = theirs()
        else:
            nodes, weights = theirs()
        # Accuracy: each measure's Wasserstein-1 distance to a reference (4 vectors x 80 steps, other seeds).
        ref = spectral_density(model, CE, batch, vectors=4, steps=80, seed=1000)
        ref_nodes = [x for n in ref.nodes for x in n]
        ref_weights = [w / len(ref.nodes) for ws in ref.weights for w in ws]
        spread = max(ref_nodes) - min(ref_nodes)

        def w1(n, w) -> float:
            return wasserstein_distance(n, ref_nodes, u_weights=w, v_weights=ref_weights) / spread

        print(
            f"   PyHessian density(): {t_theirs:.2f} s, top node {max(nodes[0]):.3f}; W1 to a reference density "
            f"(4 x 80) as a share of its range: landscape {w1(ours.nodes[0], ours.weights[0]):.2%}, PyHessian "
            f"{w1(nodes[0], weights[0]):.2%}; time PyHessian / landscape = {t_theirs / t_ours:.2f}x"
        )


def layer_part(model, batch, args) -> None:
    t_full = timeit(lambda: sharpness(model, CE, batch, iters=20, tol=1e-2), args.repeats)
    full = sharpness(model, CE, batch, iters=20, tol=1e-2)
    layered = layer_sharpness(model, CE, batch, iters=20, tol=1e-2)
    t_layers = timeit(lambda: layer_sharpness(model, CE, batch, iters=20, tol=1e-2), args.repeats)
    L = len(resolve_layers(model))
    print(
        f"3. sharpness {t_full:.2f} s ({full.hvps} HVPs); per-layer sharpness over {L} layers {t_layers:.2f} s "
        f"({sum(layered.hvps.values())} HVPs): ratio {t_layers / t_full:.1f}x; largest layer value "
        f"{max(layered.values.values()):.3f} vs full {full.value:.3f}"
    )


def warm_start_part(split, args) -> None:
    for norm in ("none", "batch"):
        model, opt, batches = trained_vgg(split, args.width, norm, 0)
        cold, warm, vector = [], [], None
        for step in range(1, 301):
            x, y = batches(step)
            opt.zero_grad()
            CE(model(x), y).backward()
            if step % 25 == 0:
                c = sharpness(model, CE, (x, y), iters=50, tol=1e-2)
                w = sharpness(model, CE, (x, y), iters=50, tol=1e-2, start=vector if vector is not None else "gradient")
                vector = w.vector
                if step > 25:
                    cold.append(c.hvps)
                    warm.append(w.hvps)
            opt.step()
        print(
            f"4. {norm}: HVPs per sharpness (tol 1e-2, every 25 steps, 11 measurements): from the gradient "
            f"{statistics.mean(cold):.1f}, warm-started {statistics.mean(warm):.1f}"
        )


if __name__ == "__main__":
    main()
