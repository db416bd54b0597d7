"""Foundation benchmarks, measured in one process on the same data tensors.

(a) the trainer's throughput against a bare PyTorch SGD loop on the same model;
(b) the tensor-resident batch pipeline against torchvision's DataLoader with PIL transforms.

    python benchmarks/bench_train.py --data-dir DATA     # real CIFAR-10 (else generated images)

Prints the ratios that go in the README. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from landscape.config import build_config
from landscape.data import CIFAR10_MEAN, CIFAR10_STD, Batches, Split, load_cifar10, synthetic_images
from landscape.models import build_model
from landscape.runs import read_metrics
from landscape.train import resolve_device, train


def bare_loop(cfg, split: Split, device, steps: int, warmup: int) -> float:
    """The loop anyone would write: examples/s after ``warmup`` steps."""
    model = build_model(cfg.model, cfg.seed, in_dim=3, out_dim=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    images, labels = split.inputs.to(device), split.targets.to(device)
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)
    perm = torch.randperm(len(labels))
    bs = cfg.data.batch_size
    model.train()
    for step in range(steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = perm[(step * bs) % (len(perm) - bs) :][:bs].to(device)
        x = (images[idx].float() / 255 - mean) / std
        loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    return (steps - warmup) * bs / (time.perf_counter() - t0)


def trainer(cfg, splits, steps: int, warmup: int) -> float:
    """examples/s of landscape.train between its train records at ``warmup`` and ``steps``."""
    with tempfile.TemporaryDirectory() as out:
        train(cfg, out=out, splits=splits)
        recs = {r["step"]: r for r in read_metrics(f"{out}/{cfg.name}/metrics.jsonl") if r["kind"] == "train"}
    dt = recs[steps]["elapsed_s"] - recs[warmup]["elapsed_s"]
    return (steps - warmup) * cfg.data.batch_size / dt


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split, transform):
        self.images = split.inputs.permute(0, 2, 3, 1).numpy()
        self.labels = split.targets.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def pipeline(split: Split, device, augment: bool, batches: int, bs: int) -> tuple[float, float]:
    """(ours, DataLoader) batches/s for ``batches`` batches of ``bs`` normalised images."""
    from torchvision import transforms as T

    ours = Batches(split, bs, seed=0, augment=augment, device=device)
    ours(0)
    t0 = time.perf_counter()
    for step in range(batches):
        x, y = ours(step)
    x.sum().item()
    ours_rate = batches / (time.perf_counter() - t0)

    tf = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    tf = T.Compose(tf + [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = torch.utils.data.DataLoader(
        PILDataset(split, tf),
        batch_size=bs,
        shuffle=True,
        drop_last=True,
        num_workers=2,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    it = iter(loader)
    next(it)  # worker start-up is not counted
    t0 = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
        x = x.to(device, non_blocking=True)
    x.sum().item()
    return ours_rate, batches / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder; generated images if omitted")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument(
        "--arch",
        default="vgg",
        choices=["vgg", "vit"],
        help="VGG-11 + BN, or the ViT at the model defaults (dim 64, depth 4, 4x4 patches) + LayerNorm",
    )
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    splits = (
        load_cifar10(args.data_dir)
        if args.data_dir
        else {"train": synthetic_images(50000, 0), "test": synthetic_images(1000, 1)}
    )
    splits["test"] = splits["test"].subset(1000)
    warmup = 20
    cfg = build_config(
        [
            {
                "name": "bench",
                "steps": args.steps,
                "device": str(device),
                "model": {
                    "arch": args.arch,
                    "vgg": {"width": args.width},
                    "norm": "batch" if args.arch == "vgg" else "layer",
                },
                "log": {"train_every": warmup, "eval_every": 0, "checkpoint_every": args.steps},
            }
        ]
    )
    what = f"VGG-11 width {args.width} + BN" if args.arch == "vgg" else "ViT (dim 64, depth 4, patch 4) + LayerNorm"
    print(
        f"device {device}, threads {torch.get_num_threads()}, {what}, batch 128, "
        f"{'CIFAR-10 ' + args.data_dir if args.data_dir else 'generated images'}"
    )
    ratios = []
    for r in range(args.repeats):
        bare = bare_loop(cfg, splits["train"], device, args.steps, warmup)
        ours = trainer(cfg, splits, args.steps, warmup)
        ratios.append(ours / bare)
        print(f"  (a) repeat {r}: bare loop {bare:8.1f} ex/s   trainer {ours:8.1f} ex/s   ratio {ours / bare:.3f}")
    print(f"(a) trainer / bare PyTorch loop throughput: median ratio {statistics.median(ratios):.3f}")
    for augment in (False, True) if args.arch == "vgg" else ():
        ours, dl = pipeline(splits["train"], device, augment, batches=100, bs=128)
        print(
            f"(b) batches/s, augment={augment}: tensor pipeline {ours:8.1f}   DataLoader+PIL (2 workers) "
            f"{dl:8.1f}   ratio {ours / dl:.1f}x"
        )


if __name__ == "__main__":
    main()
