"""Probes at scale, against baselines measured in the same run.

1. The finite-difference Hessian-vector product (two gradients) against the exact one (a backward
   through a retained graph), per product, on VGG-11 and on the ViT (written-out attention: both
   routes; fused ``sdpa`` attention: finite differences only, its CPU kernel has no double backward).
2. Probes under DistributedDataParallel: the sharpness and gradient-sweep probes on 2 processes
   (gloo, one thread each, half the global batch per rank) against 1 process with 2 threads on the
   whole global batch. On a 2-core CPU this checks that the probes scale correctly (the same work
   split in two plus the all-reduces), not a speed-up: a GPU per rank is where DDP pays.

    python benchmarks/bench_scale.py [--data-dir DATA] [--repeats 5]

Times are medians of ``--repeats``; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.multiprocessing as mp
from common import timeit, training_split

from landscape.config import ModelConfig, VggConfig, VitConfig
from landscape.data import Batches
from landscape.models import build_model
from landscape.probes.functional import Objective, current_params, evaluation
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every

CE = torch.nn.functional.cross_entropy


def _vector(w):
    g = torch.Generator().manual_seed(0)
    return {n: torch.randn(p.shape, generator=g) for n, p in w.items()}


def hvp_cost(model, batch, route: str, repeats: int) -> float:
    """Seconds per Hessian-vector product (the operator's set-up excluded), over 4 products."""
    w, f = current_params(model), Objective.of(model, CE, batch)
    v = _vector(w)
    with evaluation(hvp=route):
        op = f.hessian_operator(w)[2]
        return timeit(lambda: [op(v) for _ in range(4)], repeats) / 4


def model_of(arch: str, **kw):
    return build_model(ModelConfig(arch=arch, **kw), seed=0)


def part1(split, repeats: int) -> None:
    batch = Batches(split, 128, seed=0)(0)
    rows = [
        ("VGG-11 (width 0.25), batch 128", model_of("vgg", vgg=VggConfig(width=0.25)), ("exact", "finite_difference")),
        ("ViT (written-out attention)", model_of("vit"), ("exact", "finite_difference")),
        ("ViT (sdpa attention)", model_of("vit", vit=VitConfig(attention="sdpa")), ("finite_difference",)),
    ]
    base = None
    print("| model | route | s per HVP | / exact HVP on the same model |")
    print("|---|---|---|---|")
    for name, model, routes in rows:
        model.train()
        for route in routes:
            t = hvp_cost(model, batch, route, repeats)
            if route == "exact":
                base = t
            print(f"| {name} | {route} | {t:.4f} | {t / base:.2f}x |")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe_time(model, batch, repeats: int) -> dict:
    """Median seconds of one probe call (the whole observe: under DDP, its all-reduces included)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = {}
    for probe, opts in (("sharpness", {"iters": 10, "tol": 0.0}), ("gradient_sweep", {})):
        monitor = Monitor(
            lambda rec: None, model, opt, CE, every(1), probes=[probe], options={probe: opts}, step_hook=False
        )
        out[probe] = timeit(lambda: monitor.observe(1, batch), repeats)
        monitor.close()
    return out


def _rank(rank: int, port: int, batch, repeats: int, queue) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    half = len(batch[1]) // 2
    local = (batch[0][rank * half : (rank + 1) * half], batch[1][rank * half : (rank + 1) * half])
    model = DDP(model_of("vgg", vgg=VggConfig(width=0.25)))
    times = _probe_time(model, local, repeats)
    if rank == 0:
        queue.put(times)
    dist.destroy_process_group()


def part2(split, repeats: int) -> None:
    batch = Batches(split, 128, seed=0)(0)
    torch.set_num_threads(2)
    one = _probe_time(model_of("vgg", vgg=VggConfig(width=0.25)), batch, repeats)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_rank, args=(r, _port_holder[0], batch, repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    two = queue.get()
    for p in procs:
        p.join()
    print(
        "| probe (VGG-11 width 0.25, global batch 128) | 1 process, 2 threads (s) | 2 DDP processes, 1 thread "
        "each (s) | ratio |"
    )
    print("|---|---|---|---|")
    for probe in one:
        print(f"| {probe} | {one[probe]:.3f} | {two[probe]:.3f} | {two[probe] / one[probe]:.2f}x |")


_port_holder = [0]

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    split = training_split(a.data_dir)
    _port_holder[0] = _port()
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    part1(split, a.repeats)
    print()
    part2(split, a.repeats)
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
