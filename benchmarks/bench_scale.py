"""Probes at scale, against baselines measured in the same run.

1. The checked finite-difference Hessian-vector product (at least four gradients: the difference at h and at
   h/4, docs/scale.md) against the exact one (a backward through a retained graph), per product and in
   accuracy on a random direction, on VGG-11 (ReLU, BatchNorm), the ViT (written-out attention) and the
   language-model recipe's GPT, all float32; "refused" where the differences do not converge.
2. Probes under DistributedDataParallel and under FSDP2 (the recipe's GPT, ``fully_shard`` on each block and
   the root): the sharpness, gradient-sweep and critical-sharpness probes on 2 processes (gloo, one thread
   each, half the global batch per rank) against 1 process with 2 threads on the whole global batch, and a
   training step (forward, backward) in each setting as the yardstick, with the peak memory each call
   allocates on rank 0 (the profiler's memory records: the CPU has no allocator peak counter). On a 2-core
   CPU this checks that the probes scale correctly (the same work split in two plus the collectives), not a
   speed-up: a GPU per rank is where sharding pays. Under FSDP2 every Hessian-vector
   product is a checked central difference (its all-gathered parameters have no second backward).

    python benchmarks/bench_scale.py [--data-dir DATA] [--repeats 5]

Times are medians of ``--repeats``; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import time

import torch
import torch.multiprocessing as mp
from common import timeit, training_split

from landscape.config import ModelConfig, VggConfig
from landscape.data import Batches
from landscape.models import build_model
from landscape.models.gpt import GPT, next_token_loss
from landscape.probes.functional import InaccurateProducts, Objective, current_params, evaluation, norm
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every
from landscape.recipes.lm import corpus, global_batch, shard

CE = torch.nn.functional.cross_entropy


def _vector(w):
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=g) for n, p in w.items()}


def hvp_cost(model, batch, route: str, repeats: int, loss=CE) -> tuple[float, dict | None]:
    """Seconds per Hessian-vector product (the operator's set-up excluded), over 4 products, and the product
    itself; (nan, None) where the finite differences are refused (they did not converge)."""
    w, f = current_params(model), Objective.of(model, loss, batch)
    v = _vector(w)
    with evaluation(hvp=route):
        op = f.hessian_operator(w)[2]
        try:
            product = op(v)
        except InaccurateProducts:
            return math.nan, None
        return timeit(lambda: [op(v) for _ in range(4)], repeats) / 4, product


def gpt_and_batch(size: int):
    """The language-model recipe's GPT and a global batch of ``size`` sequences of its text."""
    torch.manual_seed(0)
    tokens, _ = corpus()
    return GPT(), global_batch(tokens, size, 64, 0, 1)


def model_of(arch: str, **kw):
    return build_model(ModelConfig(arch=arch, **kw), seed=0)


def part1(split, repeats: int) -> None:
    batch = Batches(split, 128, seed=0)(0)
    gpt, text = gpt_and_batch(16)
    rows = [
        ("VGG-11 (width 0.25, BN), batch 128", model_of("vgg", vgg=VggConfig(width=0.25)), batch, CE),
        ("ViT (written-out attention), batch 128", model_of("vit"), batch, CE),
        ("the recipe's GPT, 16 x 64 tokens", gpt, text, next_token_loss),
    ]
    print(
        "| model (float32) | s per exact HVP | s per checked FD HVP | FD / exact | FD's relative error "
        "against exact (random v) |"
    )
    print("|---|---|---|---|---|")
    for name, model, b, loss in rows:
        model.train()
        t_exact, exact = hvp_cost(model, b, "exact", repeats, loss)
        t_fd, fd = hvp_cost(model, b, "finite_difference", repeats, loss)
        if fd is None:
            print(f"| {name} | {t_exact:.4f} | refused: did not converge | - | - |")
            continue
        err = float(norm({n: fd[n] - exact[n] for n in fd})) / float(norm(exact))
        print(f"| {name} | {t_exact:.4f} | {t_fd:.4f} | {t_fd / t_exact:.2f}x | {err:.1e} |")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROBES = (("sharpness", {"iters": 10, "tol": 1e-12}), ("gradient_sweep", {}), ("critical_sharpness", {}))


def _probe_time(model, batch, repeats: int) -> dict:
    """Median seconds of one probe call (the whole observe: under DDP, its all-reduces included), and the peak
    memory each region allocates (:func:`region_peak_mb`)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        next_token_loss(model(batch[0]), batch[1]).backward()

    out = {"training step (no optimizer update)": timeit(train_step, repeats)}
    peak = {"training": region_peak_mb(train_step)}  # leaves a gradient in p.grad, which the update probes read
    for probe, opts in PROBES:
        monitor = Monitor(
            lambda rec: None,
            model,
            opt,
            next_token_loss,
            every(1),
            probes=[probe],
            options={probe: opts},
            step_hook=False,
        )
        out[probe] = timeit(lambda: monitor.observe(1, batch), repeats)
        peak[probe] = region_peak_mb(lambda: monitor.observe(1, batch))
        monitor.close()
    out["peak"] = peak
    return out


def region_peak_mb(fn) -> float:
    """The most memory ``fn`` holds at once beyond what was allocated before it, in MB: the CPU has no allocator
    peak counter (CUDA's max_memory_allocated), so the profiler's memory records are replayed, every operator's
    allocations net of its frees in the order they ran (a peak inside one operator is seen as its net)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def _rank(rank: int, port: int, batch, repeats: int, queue, kind: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    half = len(batch[1]) // 2
    local = (batch[0][rank * half : (rank + 1) * half], batch[1][rank * half : (rank + 1) * half])
    model = gpt_and_batch(1)[0]  # the same initial weights as the single process
    model = DDP(model) if kind == "ddp" else shard(model)
    times = _probe_time(model, local, repeats)
    if rank == 0:
        queue.put(times)
    dist.destroy_process_group()


def part2(repeats: int) -> None:
    model, batch = gpt_and_batch(32)
    torch.set_num_threads(2)
    one = _probe_time(model, batch, repeats)
    ctx = mp.get_context("spawn")
    two = {}
    for kind in ("ddp", "fsdp"):
        queue = ctx.SimpleQueue()
        port = _port()
        procs = [ctx.Process(target=_rank, args=(r, port, batch, repeats, queue, kind)) for r in range(2)]
        for p in procs:
            p.start()
        two[kind] = queue.get()
        for p in procs:
            p.join()
    print(
        "| probe (the recipe's GPT, global batch 32 x 64 tokens) | 1 process, 2 threads (s) | 2 DDP processes (s) | "
        "2 FSDP2 processes (s) | DDP / 1 | FSDP2 / 1 | FSDP2 probe / FSDP2 training step |"
    )
    print("|---|---|---|---|---|---|---|")
    step = "training step (no optimizer update)"
    for probe in [k for k in one if k != "peak"]:
        d, f = two["ddp"][probe], two["fsdp"][probe]
        print(
            f"| {probe} | {one[probe]:.3f} | {d:.3f} | {f:.3f} | {d / one[probe]:.2f}x | {f / one[probe]:.2f}x | "
            f"{f / two['fsdp'][step]:.1f}x |"
        )
    print(
        "\nPeak memory allocated by one call on rank 0 (MB, beyond what was held before it; the profiler's memory "
        "records replayed), and each probe's over the training step's:\n"
    )
    probes = [p for p, _ in PROBES]
    print(
        "| setting | training step | " + " | ".join(probes) + " | " + " | ".join(f"{p} / step" for p in probes) + " |"
    )
    print("|---|---|" + "---|" * (2 * len(probes)))
    for name, times in (("1 process", one), ("DDP x 2", two["ddp"]), ("FSDP2 x 2", two["fsdp"])):
        peak = times["peak"]
        cells = [f"{peak[p]:.1f}" for p in probes] + [f"{peak[p] / peak['training']:.2f}x" for p in probes]
        print(f"| {name} | {peak['training']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--distributed-only", action="store_true", help="part 2 only (DDP and FSDP2 against 1 process)")
    a = ap.parse_args()
    split = training_split(a.data_dir)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    if not a.distributed_only:
        part1(split, a.repeats)
        print()
    part2(a.repeats)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
