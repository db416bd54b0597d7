"""The CPU paths a user could switch on for the main job's VGG training, against the default in the same run.

For VGG-11 at the quick preset's width (0.25) and batch (128), one SGD training step (forward, backward, update)
timed in each of: the default (contiguous NCHW, eager), channels-last memory format (model and batch), and
``torch.compile`` (inductor; its compile time reported apart), and both. Each path starts from the same weights and
batches; the loss after the timed steps says whether its kernels change the numbers (a different summation
order changes the last bits, and a chaotic training run then diverges from the records: docs/benchmarks.md).

    python benchmarks/bench_cpu_paths.py [--steps 20] [--repeats 3]

Then the floor: the floating-point operations of one training step (``torch.utils.flop_counter``: convolutions and
matrix products, forward and backward; BN, ReLU, pooling and the update are not counted) against the rate this
machine reaches on one large float32 matrix product on the same threads. The step's time can approach
``flops / rate`` but not go below it, whatever the kernels: the bound for the main job's training steps.

Times are medians of ``--repeats`` runs of ``--steps`` steps after a warm-up; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from landscape.config import ModelConfig, VggConfig
from landscape.models import build_model


def batches(n: int):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g)) for _ in range(n)]


def path(name: str, data, steps: int, repeats: int) -> tuple[float, float, float]:
    """(median seconds per step, compile seconds, loss after the last step) for one path."""
    model = build_model(ModelConfig(arch="vgg", norm="batch", vgg=VggConfig(width=0.25)), seed=0)
    last = "channels" in name
    if last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step_model = torch.compile(model) if "compile" in name else model

    def step(x, y):
        if last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    step(*data[0])  # warm-up (and the compile)
    compile_s = time.perf_counter() - t0 if "compile" in name else 0.0
    times, loss = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, y in data[1 : steps + 1]:
            loss = step(x, y)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times), compile_s, loss.item()


def step_flops(data) -> int:
    """Floating-point operations one training step's convolutions and matrix products do (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(ModelConfig(arch="vgg", norm="batch", vgg=VggConfig(width=0.25)), seed=0)
    x, y = data[0]
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n float32 matrix product on this process's threads (the best of ``repeats``)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="default,channels_last,compile,compile+channels_last")
    a = ap.parse_args()
    data = batches(a.steps + 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, VGG-11 width 0.25 with BN, batch 128\n")
    print("| path | s per step | / default | compile s | loss after the timed steps |")
    print("|---|---|---|---|---|")
    base, fastest = None, float("inf")
    for name in a.paths.split(","):
        try:
            t, c, loss = path(name, data, a.steps, a.repeats)
        except Exception as exc:  # a path this machine's torch cannot take (no compiler for inductor, say)
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} | | | |")
            continue
        base = base or t
        fastest = min(fastest, t)
        print(f"| {name} | {t:.4f} | {t / base:.2f} | {c:.1f} | {loss:.6f} |")
    flops, rate = step_flops(data), matmul_rate()
    print("\n| the floor | value |\n|---|---|")
    print(f"| FLOPs of one training step (convolutions and products, forward and backward) | {flops / 1e9:.2f} G |")
    threads = torch.get_num_threads()
    print(f"| rate of a 2048 x 2048 float32 matrix product, {threads} threads | {rate / 1e9:.1f} GFLOP/s |")
    print(f"| one step at that rate (the floor) | {flops / rate:.4f} s |")
    if fastest < float("inf"):
        share = f"{flops / fastest / 1e9:.1f} GFLOP/s, {flops / rate / fastest:.0%} of the product's rate"
        print(f"| the fastest path above | {fastest:.4f} s: {share} |")
    print(f"| 8,000 steps (the main job's 8 VGG runs of 1,000) at the floor | {8000 * flops / rate:.0f} s |")
