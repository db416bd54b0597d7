"""Warm-started block Krylov for the eigenvalues above the edge line: products per measurement, from the
previous measurement's Ritz vectors against a cold (random) start, on the same weights.

fc-tanh (Cohen et al.'s network) trained by full-batch GD on a CIFAR-10 subset at lr 2/100, in the
square loss; every ``--every`` steps both starts measure the eigenvalues above 1.5/lr (probes never
change training, so both see the same weights). The warm chain feeds each measurement's vectors to
the next; the cold one starts from random vectors each time.

    python benchmarks/bench_edge.py --data-dir DATA [--images 2000 --steps 1500 --every 100]

Nothing here asserts a time or a count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import training_split

from landscape.config import MlpConfig, ModelConfig
from landscape.data import Batches, pixel_stats
from landscape.losses import LOSSES
from landscape.models import build_model
from landscape.probes import edge_eigenvalues


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.02)
    a = ap.parse_args()
    split = training_split(a.data_dir)
    mean, std = pixel_stats(split)
    batch = Batches(split.subset(a.images), 0, seed=0, mean=mean, std=std)(0)
    model = build_model(
        ModelConfig(arch="mlp", init="torch_default", mlp=MlpConfig(widths=(200, 200), activation="tanh")),
        seed=0,
        in_dim=3,
        out_dim=10,
    )
    loss_fn = LOSSES["square_onehot"]
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    line = 0.75 * 2 / a.lr
    warm_vectors, rows = None, []
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        if step == 1 or step % a.every == 0:
            cold = edge_eigenvalues(model, loss_fn, batch, line, seed=step)
            warm = edge_eigenvalues(model, loss_fn, batch, line, seed=step, start=warm_vectors)
            warm_vectors = warm.vectors
            rows.append((step, cold.count, cold.products, warm.count, warm.products, cold.top))
        opt.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.step()
    print(f"fc-tanh, {a.images} images, lr {a.lr:g}, line {line:g} (1.5/lr); {time.perf_counter() - t0:.0f} s\n")
    print("| step | top eigenvalue | count (cold) | products (cold) | count (warm) | products (warm) |")
    print("|---|---|---|---|---|---|")
    for step, cc, cp, wc, wp, top in rows:
        print(f"| {step} | {top:.1f} | {cc} | {cp} | {wc} | {wp} |")
    busy = [(cp, wp) for _, cc, cp, wc, wp, _ in rows if cc or wc]
    if busy:
        cold_mean, warm_mean = statistics.mean(c for c, _ in busy), statistics.mean(w for _, w in busy)
        print(
            f"\nover the {len(busy)} measurements with eigenvalues above the line: {cold_mean:.1f} products cold, "
            f"{warm_mean:.1f} warm ({1 - warm_mean / cold_mean:.0%} fewer)"
        )


if __name__ == "__main__":
    main()
