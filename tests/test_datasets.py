"""Image data sets beyond CIFAR-10: an image-folder tree of any size, grayscale or colour and any
number of classes, and torchvision's data sets read offline from the folder they download into."""

import json
import pickle

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from landscape.cli import app
from landscape.data import channel_stats, load_folder, load_torchvision, resize_images
from landscape.errors import UserError
from landscape.models import VGG


def make_tree(root, size=28, classes=("a", "b", "c"), per_class=6, mode="L"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                base = np.full((size, size), 60 * k + 20, dtype=np.uint8)
                img = (base + rng.integers(0, 30, (size, size))).astype(np.uint8)
                if mode == "RGB":
                    img = np.stack([img, img // 2, 255 - img], axis=-1)
                Image.fromarray(img, mode).save(d / f"{i}.png")
    return root


def test_grayscale_folder_of_28x28_images_with_3_classes_is_resized_and_kept_gray(tmp_path):
    splits = load_folder(make_tree(tmp_path / "tree"), size=32, cache_dir=tmp_path / "cache")
    assert splits["train"].inputs.shape == (18, 1, 32, 32) and splits["train"].inputs.dtype == torch.uint8
    assert sorted(splits["test"].targets.unique().tolist()) == [0, 1, 2]
    mean, std = channel_stats(splits["train"])
    assert len(mean) == 1 and 0 < mean[0] < 1 and std[0] > 0


def test_colour_folder_keeps_three_channels_and_any_size(tmp_path):
    splits = load_folder(
        make_tree(tmp_path / "tree", size=40, classes=("x", "y"), mode="RGB"), size=48, cache_dir=tmp_path / "cache"
    )
    assert splits["train"].inputs.shape == (12, 3, 48, 48)


def test_vgg_adapts_to_channels_size_and_classes():
    for channels, size in ((1, 32), (3, 64)):
        model = VGG(11, 0.0625, num_classes=3, in_channels=channels)
        assert model(torch.randn(2, channels, size, size)).shape == (2, 3)


def test_resize_is_identity_at_the_same_size():
    x = torch.randint(0, 255, (3, 1, 28, 28), dtype=torch.uint8)
    assert resize_images(x, 28) is x
    assert resize_images(x, 32).shape == (3, 1, 32, 32)


def test_folder_data_set_trains_and_is_probed_through_landscape_train(tmp_path):
    tree = make_tree(tmp_path / "tree")
    cfg = {
        "name": "gray",
        "steps": 6,
        "device": "cpu",
        "data": {"dataset": "folder", "batch_size": 6},
        "model": {"vgg": {"width": 0.0625}, "norm": "batch"},
        "probes": {"enabled": ["gradient_sweep", "ics_opti", "activation_stats"], "schedule": "every", "every": 3},
        "log": {"train_every": 3, "eval_every": 6, "checkpoint_every": 6},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(
        app, ["train", str(path), "--data-dir", str(tree), "--out", str(tmp_path / "runs"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "runs" / "gray" / "metrics.jsonl").read_text().splitlines()]
    probes = {r["probe"] for r in records if r["kind"] == "probe"}
    assert probes == {"gradient_sweep", "ics_opti", "activation_stats"}
    status = json.loads((tmp_path / "runs" / "gray" / "status.json").read_text())
    assert status["status"] == "done" and 0 <= status["test"]["acc"] <= 1


def test_folder_without_data_dir_or_splits_is_one_line(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir"):
        load_folder(None, 32)
    (tmp_path / "only").mkdir()
    with pytest.raises(UserError, match="no train/ and test/"):
        load_folder(tmp_path / "only", 32)


def test_cifar100_offline_is_read_with_the_restricted_unpickler(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 8), ("test", 4)):
        entry = {
            "data": np.random.default_rng(1).integers(0, 255, (n, 3072), dtype=np.uint8),
            "fine_labels": [i % 5 for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    splits = load_torchvision("cifar100", tmp_path)
    assert splits["train"].inputs.shape == (8, 3, 32, 32) and splits["test"].targets.tolist() == [0, 1, 2, 3]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "train").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UserError, match="unreadable"):
        load_torchvision("cifar100", tmp_path)


def test_mnist_offline_reads_torchvisions_raw_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path, array, magic):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    for prefix, n in (("train", 10), ("t10k", 5)):
        idx(raw / f"{prefix}-images-idx3-ubyte", np.random.default_rng(2).integers(0, 255, (n, 28, 28)), 2051)
        idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    splits = load_torchvision("mnist", tmp_path)
    assert splits["train"].inputs.shape == (10, 1, 28, 28) and splits["test"].targets.tolist() == [0, 1, 2, 3, 4]


def test_missing_torchvision_data_set_is_one_line(tmp_path):
    with pytest.raises(UserError, match="mnist could not be loaded"):
        load_torchvision("mnist", tmp_path)
