import pytest
import torch

from landscape.data import (
    CIFAR10_CLASSES,
    Batches,
    Split,
    augment_batch,
    gaussian_regression,
    load_cifar10,
    seeded_generator,
    synthetic_images,
)
from landscape.errors import UserError
from tests.conftest import make_batches_dir, make_image_tree


@pytest.mark.parametrize("point_at_parent", [True, False])
def test_official_batches_layout(tmp_path, point_at_parent):
    folder, images, labels = make_batches_dir(tmp_path)
    splits = load_cifar10(tmp_path if point_at_parent else folder)
    assert splits["train"].inputs.dtype == torch.uint8
    assert tuple(splits["train"].inputs.shape) == (20, 3, 32, 32)
    assert tuple(splits["test"].inputs.shape) == (4, 3, 32, 32)
    assert torch.equal(splits["train"].inputs, torch.from_numpy(images))
    assert splits["train"].targets.tolist() == labels


def test_image_tree_png_is_lossless_and_uses_cifar_label_order(tmp_path):
    # Create the class folders in reverse alphabetical order: labels must still follow CIFAR-10.
    written = make_image_tree(tmp_path / "cifar", classes=sorted(CIFAR10_CLASSES, reverse=True))
    splits = load_cifar10(tmp_path)  # one folder above the tree, as the shared tarball extracts
    for split in ("train", "test"):
        got = splits[split]
        assert len(got) == 20
        for img, cls in written[split]:
            label = CIFAR10_CLASSES.index(cls)
            match = [(got.inputs[i] == img).all().item() for i in range(len(got)) if got.targets[i] == label]
            assert any(match), f"{cls} image not found under label {label}"


def test_image_tree_jpeg_and_other_class_names(tmp_path):
    make_image_tree(tmp_path, per_class=3, classes=("zebra", "ant", "moth"), suffix=".jpg")
    splits = load_cifar10(tmp_path)
    assert splits["train"].targets.bincount().tolist() == [3, 3, 3]  # alphabetical: ant, moth, zebra
    assert splits["train"].inputs.shape == (9, 3, 32, 32)


def test_image_tree_is_decoded_once_then_cached(tmp_path, monkeypatch):
    make_image_tree(tmp_path / "tree", per_class=1)
    first = load_cifar10(tmp_path / "tree")
    import landscape.data as data

    def fail(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data, "_read_image_tree", fail)
    second = load_cifar10(tmp_path / "tree")
    assert torch.equal(first["train"].inputs, second["train"].inputs)


def test_corrupt_cache_is_rebuilt(tmp_path):
    make_image_tree(tmp_path / "tree", per_class=1)
    load_cifar10(tmp_path / "tree")
    for f in (tmp_path / "cache").glob("*.pt"):
        f.write_bytes(b"garbage")
    assert len(load_cifar10(tmp_path / "tree")["train"]) == 10


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "no CIFAR-10 found"),
    ],
)
def test_missing_data_is_a_one_line_error(tmp_path, setup, message):
    target = tmp_path / "nowhere"
    setup(target)
    with pytest.raises(UserError, match=message) as err:
        load_cifar10(target)
    assert "\n" not in str(err.value)


def test_no_data_dir_and_no_download_says_how(tmp_path):
    with pytest.raises(UserError, match="--data-dir"):
        load_cifar10(None, cache_dir=tmp_path, download=False)


def test_truncated_batch_file(tmp_path):
    folder, _, _ = make_batches_dir(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x04trunc")
    with pytest.raises(UserError, match="data_batch_3' is unreadable"):
        load_cifar10(folder)


def test_batches_are_a_pure_function_of_seed_and_step():
    split = synthetic_images(100, 0)
    a, b = Batches(split, 32, seed=5), Batches(split, 32, seed=5)
    for step in [7, 0, 3, 6, 2]:  # any order, as after a resume
        xa, ya = a(step)
        xb, yb = b(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a(0)[1], Batches(split, 32, seed=6)(0)[1])


def test_one_epoch_visits_each_example_once_and_drops_the_remainder():
    split = Split(torch.zeros(100, 3, 32, 32, dtype=torch.uint8), torch.arange(100))
    b = Batches(split, 32, seed=0)
    assert b.steps_per_epoch == 3
    seen = torch.cat([b.indices(s) for s in range(3)])
    assert len(set(seen.tolist())) == 96
    assert not torch.equal(b.indices(0), b.indices(3))  # a new permutation each epoch


def test_normalisation_matches_torchvision():
    from torchvision.transforms import v2

    split = synthetic_images(8, 0)
    x, _ = Batches(split, 0, seed=0)(0)
    ref = v2.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))(split.inputs.float() / 255)
    torch.testing.assert_close(x, ref)


def test_augmentation_crops_and_flips_whole_batches():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment_batch(x, seeded_generator(0))
    assert out.shape == x.shape
    # every output image is a (possibly flipped) 32x32 window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    split = synthetic_images(64, 0)
    plain, aug = Batches(split, 16, 0, augment=False), Batches(split, 16, 0, augment=True)
    assert torch.equal(plain(1)[1], aug(1)[1]) and not torch.equal(plain(1)[0], aug(1)[0])


def test_full_batch_and_subset():
    split = synthetic_images(50, 0)
    x, y = Batches(split, 0, seed=0)(9)
    assert len(y) == 50
    sub = split.subset(10)
    assert len(sub) == 10 and torch.equal(sub.targets, split.subset(10).targets)


def test_gaussian_regression_targets_are_a_fixed_linear_map():
    a = gaussian_regression(200, 10, seed=3, sample_seed=0)
    b = gaussian_regression(200, 10, seed=3, sample_seed=1)
    A = torch.linalg.lstsq(a.inputs, a.targets).solution.T
    torch.testing.assert_close(b.inputs @ A.T, b.targets, atol=1e-4, rtol=1e-4)
    assert abs(a.inputs.mean()) < 0.1 and abs(a.inputs.std() - 1) < 0.1
    assert not torch.equal(a.inputs, b.inputs)


def test_an_image_edited_in_place_invalidates_the_cache_and_its_new_pixels_are_trained_on(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    from landscape.data import fingerprint

    written = make_image_tree(tmp_path / "tree", per_class=1)
    first = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    path = tmp_path / "tree" / "train" / CIFAR10_CLASSES[0] / "0000.png"
    img = np.array(Image.open(path))
    img[0, 0] = 255 - img[0, 0]  # one pixel, same size: only the content and the time change
    Image.fromarray(img).save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert fingerprint(second["train"], second["test"]) != fingerprint(first["train"], first["test"])
    i = [c for _, c in written["train"]].index(CIFAR10_CLASSES[0])
    assert second["train"].inputs[i, :, 0, 0].tolist() == img[0, 0].tolist()  # the new pixel, not the cached one
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_hidden_folders_are_not_classes_and_links_must_stay_inside_the_tree(tmp_path):
    make_image_tree(tmp_path / "tree", per_class=1)
    (tmp_path / "tree" / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "tree" / "test" / ".DS_Store").write_text("")
    splits = load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache")
    assert int(splits["train"].targets.max()) == 9
    (tmp_path / "tree" / "train" / "zzz").symlink_to("/usr")
    with pytest.raises(UserError, match="links outside the data set"):
        load_cifar10(tmp_path / "tree", cache_dir=tmp_path / "cache2")


@pytest.mark.parametrize(
    "labels, inputs, message",
    [
        ([-7, 1], None, "labels run from -7"),
        ([10**12, 1], None, "labels run from 1 to 1000000000000"),
        ([0, 1, 2], None, "2 inputs but 3 labels"),
        ([0, 1], (2, 3, 4, 4), "H and W >= 8"),
    ],
)
def test_loaded_data_with_bad_labels_or_shapes_is_refused_where_it_is_loaded(labels, inputs, message):
    from landscape.data import split_problem

    x = torch.zeros(inputs or (2, 3, 32, 32), dtype=torch.uint8)
    assert message in split_problem("train", Split(x, torch.tensor(labels)), image=True)
    assert (
        split_problem("train", Split(x[:0], torch.tensor([], dtype=torch.int64)), image=True)
        == "its train split has no examples"
    )


def test_images_beyond_pils_bomb_size_are_said_once_per_split(tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    from landscape.data import load_folder

    make_image_tree(tmp_path / "tree", per_class=2, classes=("a", "b"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 32x32 = 1,024 pixels: over it, under 2x (an error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_folder(tmp_path / "tree", 32, cache_dir=tmp_path / "cache")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("exceed PIL's decompression-bomb size" in m for m in messages), messages
