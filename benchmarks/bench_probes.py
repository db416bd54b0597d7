"""Probe benchmarks, in one process, on one model and batch, against baselines measured in the same run.

1. a K-point ``gradient_sweep`` against K plain forward+backward passes;
2. ``ics_opti`` over L layers against L+1 plain passes;
3. ``sharpness``: one HVP against one gradient, and time to 1% relative accuracy against
   PyHessian's ``hessian(...).eigenvalues()`` (``pip install -e .[bench]``).

    python benchmarks/bench_probes.py --data-dir DATA

Times are medians of ``--repeats``; nothing here asserts a time.
"""

from __future__ import annotations

import argparse

import torch
from common import first_batch, timeit, training_split

from landscape.config import ModelConfig, VggConfig
from landscape.data import Batches
from landscape.models import build_model
from landscape.probes import gradient_sweep, ics_opti, resolve_layers, sharpness
from landscape.probes.functional import Objective, current_params

CE = torch.nn.functional.cross_entropy


def plain_passes(model, batch, k: int) -> None:
    for _ in range(k):
        model.zero_grad(set_to_none=True)
        CE(model(batch[0]), batch[1]).backward()


def step_gradient(model, batch) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = CE(model(batch[0]), batch[1])
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def theory_probes(model, batch, repeats: int) -> None:
    """4. Section 4's probes on the BN VGG, each against the plain passes it needs (one forward-backward for
    bn_gradient; per BN layer three HVPs for bn_curvature; per conv output a Lanczos run for activation_hessian)."""
    from landscape.probes import activation_hessian, bn_curvature, bn_gradient
    from landscape.probes.theory import batch_norm_layers

    layers = batch_norm_layers(model)
    one = timeit(lambda: plain_passes(model, batch, 1), repeats)
    t_grad = timeit(lambda: bn_gradient(model, CE, batch), repeats)
    t_curv = timeit(lambda: bn_curvature(model, CE, batch), max(1, repeats // 2))
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    r = activation_hessian(model, CE, batch, convs, iters=10, tol=0.05)
    t_act = timeit(lambda: activation_hessian(model, CE, batch, convs, iters=10, tol=0.05), max(1, repeats // 2))
    print(f"4. Section 4's probes on VGG-11 + BN ({len(layers)} BN layers, {len(convs)} conv outputs): one plain pass")
    print(f"   {one * 1e3:.0f} ms; bn_gradient {t_grad * 1e3:.0f} ms, ratio {t_grad / one:.2f} (one pass needed)")
    print(f"   bn_curvature {t_curv * 1e3:.0f} ms, ratio {t_curv / one:.1f} (3 HVPs per layer: {3 * len(layers)})")
    print(f"   activation_hessian (iters 10, tol 0.05) {t_act:.2f} s, ratio {t_act / one:.1f} ({r.cost})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument(
        "--arch",
        default="vgg",
        choices=["vgg", "vit"],
        help="VGG-11 + BN, or the ViT at the model defaults (dim 64, depth 4, 4x4 patches) + LayerNorm",
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-pyhessian", action="store_true")
    ap.add_argument("--theory", action="store_true", help="only section 4: the theory probes against plain passes")
    args = ap.parse_args()
    torch.manual_seed(0)
    split = training_split(args.data_dir)
    batch = first_batch(split, args.batch)
    print(
        f"CPU threads {torch.get_num_threads()}, batch {args.batch}, "
        f"{'CIFAR-10' if args.data_dir else 'generated images'}"
    )

    # 1 + 2: VGG-11 with BatchNorm (or the ViT with LayerNorm) in train mode, as probed during training
    vgg = args.arch == "vgg"
    model = build_model(
        ModelConfig(arch=args.arch, norm="batch" if vgg else "layer", vgg=VggConfig(width=args.width)), in_dim=3
    )
    what = f"VGG-11 x{args.width} + BN" if vgg else "the ViT (dim 64, depth 4, patch 4) + LayerNorm"
    model.train()
    if args.theory:
        return theory_probes(model, batch, args.repeats) if vgg else None
    K = args.points
    etas = [0.05 * (i + 1) for i in range(K)]
    loss, grad = step_gradient(model, batch)
    base_k = timeit(lambda: plain_passes(model, batch, K), args.repeats)
    sweep_reuse = timeit(lambda: gradient_sweep(model, CE, batch, etas, grad=grad, loss=loss), args.repeats)
    sweep_fresh = timeit(lambda: gradient_sweep(model, CE, batch, etas), args.repeats)
    print(f"1. gradient_sweep, K={K} on {what}:  {K} plain passes {base_k * 1e3:.0f} ms")
    print(
        f"   reusing the step's gradient (as the trainer does): {sweep_reuse * 1e3:.0f} ms, "
        f"ratio {sweep_reuse / base_k:.3f}"
    )
    print(
        f"   computing it too (K+1 passes):                     {sweep_fresh * 1e3:.0f} ms, "
        f"ratio {sweep_fresh / base_k:.3f}"
    )

    L = len(resolve_layers(model))
    next_params = {n: p.detach() - 0.1 * grad[n] for n, p in model.named_parameters()}
    base_l = timeit(lambda: plain_passes(model, batch, L + 1), args.repeats)
    ics_reuse = timeit(lambda: ics_opti(model, CE, batch, next_params, grad=grad), args.repeats)
    ics_fresh = timeit(lambda: ics_opti(model, CE, batch, next_params), args.repeats)
    print(f"2. ics_opti over L={L} layers:  {L + 1} plain passes {base_l * 1e3:.0f} ms")
    print(f"   reusing the step's gradient: {ics_reuse * 1e3:.0f} ms, ratio {ics_reuse / base_l:.3f}")
    print(f"   computing it too:            {ics_fresh * 1e3:.0f} ms, ratio {ics_fresh / base_l:.3f}")

    if vgg:
        theory_probes(model, batch, args.repeats)
    if not vgg:
        return
    # 3: sharpness on the VGG without BatchNorm (PyHessian switches to eval mode; same function here)
    model = build_model(ModelConfig(norm="none", vgg=VggConfig(width=args.width)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(30):  # leave the initialisation: a more typical spectrum
        b = Batches(split, args.batch, seed=1)(step)
        opt.zero_grad()
        CE(model(b[0]), b[1]).backward()
        opt.step()
    model.eval()
    f = Objective.of(model, CE, batch)
    w = current_params(model)
    v = {n: torch.randn_like(t) for n, t in w.items()}
    t_grad = timeit(lambda: f.value_and_grad(w), args.repeats)
    t_jvp = timeit(lambda: f.hvp(w, v), args.repeats)
    _, _, hvp = f.hessian_operator(w)
    t_hvp = timeit(lambda: hvp(v), args.repeats)
    print(
        f"3. one gradient {t_grad * 1e3:.0f} ms; one HVP through the retained graph (what sharpness uses) "
        f"{t_hvp * 1e3:.0f} ms, ratio {t_hvp / t_grad:.2f}; jvp over grad {t_jvp * 1e3:.0f} ms, "
        f"ratio {t_jvp / t_grad:.2f}"
    )
    exact = sharpness(model, CE, batch, iters=100, tol=1e-7).value
    print(f"   reference top eigenvalue (Lanczos to 1e-7): {exact:.4f}")

    def first_within(run, label):
        """Smallest iteration budget whose answer is within 1%; time of that run (median)."""
        for k in range(1, 101):
            value = run(k)
            if abs(value - exact) <= 0.01 * abs(exact):
                t = timeit(lambda: run(k), max(1, args.repeats // 2))
                print(f"   {label}: {k} iterations, {t:.2f} s to within 1% ({value:.4f})")
                return t
        print(f"   {label}: not within 1% after 100 iterations")
        return float("nan")

    ours = first_within(lambda k: sharpness(model, CE, batch, iters=k, tol=0.0).value, "landscape.sharpness")
    t_stop = timeit(lambda: sharpness(model, CE, batch, iters=100, tol=1e-2), max(1, args.repeats // 2))
    r = sharpness(model, CE, batch, iters=100, tol=1e-2)
    print(
        f"   landscape.sharpness with its own stopping rule (tol=1e-2): {r.hvps} HVPs, {t_stop:.2f} s, "
        f"error {abs(r.value - exact) / abs(exact):.2e}"
    )
    if args.skip_pyhessian:
        return
    try:
        from pyhessian import hessian
    except ImportError:
        print("   PyHessian not installed: pip install -e .[bench]")
        return

    def pyhessian_run(k: int, tol: float = -1.0) -> float:
        torch.manual_seed(0)
        h = hessian(model, CE, data=batch, cuda=False)  # builds the gradient graph once, as PyHessian does
        return h.eigenvalues(maxIter=k, tol=tol)[0][0]

    theirs = first_within(pyhessian_run, "PyHessian eigenvalues (power iteration)")
    t_default = timeit(lambda: pyhessian_run(100, 1e-3), max(1, args.repeats // 2))
    value = pyhessian_run(100, 1e-3)
    print(
        f"   PyHessian defaults (maxIter=100, tol=1e-3): {t_default:.2f} s, error {abs(value - exact) / abs(exact):.2e}"
    )
    print(
        f"   time to 1%: PyHessian / landscape = {theirs / ours:.2f}x; "
        f"PyHessian defaults / landscape tol=1e-2 = {t_default / t_stop:.2f}x"
    )


if __name__ == "__main__":
    main()
