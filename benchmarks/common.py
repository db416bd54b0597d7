"""What the benchmark scripts share: timing and the batch they measure on."""

from __future__ import annotations

import statistics
import time

import torch

from landscape.data import Batches, Split, load_cifar10, synthetic_images


def timeit(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def training_split(data_dir: str | None) -> Split:
    """CIFAR-10's training split from ``data_dir``, or generated images without one."""
    return load_cifar10(data_dir)["train"] if data_dir else synthetic_images(2048, 0)


def first_batch(split: Split, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return Batches(split, batch_size, seed=0)(0)
