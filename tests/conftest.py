"""Shared fixtures: tiny generated data in both CIFAR-10 layouts and small configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.config import build_config
from landscape.data import CIFAR10_CLASSES

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_block(first_line: str) -> tuple[str, str]:
    """The Python example of the README or a docs page that starts with ``first_line``: (its code, its file)."""
    for page in DOCS:
        text = page.read_text()
        marker = "```python\n" + first_line
        if marker in text:
            start = text.index(marker)
            return text[start + len("```python\n") : text.index("```", start + 10)], page.name
    raise AssertionError(f"no example starting {first_line!r} in the README or docs/")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tests never read or write the user's data cache."""
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))


def make_batches_dir(root: Path, per_batch: int = 4, seed: int = 0) -> tuple[Path, np.ndarray, list[int]]:
    """A tiny official-layout ``cifar-10-batches-py`` folder; returns it, the train images and labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    all_images, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        if name != "test_batch":
            all_images.append(data)
            all_labels += labels
    return folder, np.concatenate(all_images).reshape(-1, 3, 32, 32), all_labels


def make_image_tree(root: Path, per_class: int = 2, classes=CIFAR10_CLASSES, suffix: str = ".png", seed: int = 0):
    """A tiny ``train/<class>/`` + ``test/<class>/`` tree; returns {split: [(image uint8 CHW, class name)]}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for split in ("train", "test"):
        written[split] = []
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}{suffix}", quality=95)
                written[split].append((torch.from_numpy(img).permute(2, 0, 1), c))
    return written


def tiny_config(**sections):
    """A VGG config that trains in about a second on generated images."""
    base = {
        "name": "tiny",
        "steps": 12,
        "device": "cpu",
        "data": {"dataset": "synthetic", "batch_size": 16, "synthetic_size": 64},
        "model": {"vgg": {"width": 0.0625}},
        "optim": {"lr": 0.05},
        "log": {"train_every": 2, "eval_every": 6, "checkpoint_every": 4},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return build_config([base])


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory):
    """Every registered experiment at the smoke preset, one seed, with its report: built once per
    session and shared (tests that change it work on a copy)."""
    from landscape.reproduce import reproduce

    out = tmp_path_factory.mktemp("smoke")
    summaries, report = reproduce("smoke", 1, out, log=lambda s: None, beyond=True)
    return out, summaries, report.read_text()
