"""Data sets as tensors held on the training device, and seeded batches drawn from them.

CIFAR-10 comes from torchvision's official (md5-verified) download, or offline from
``--data-dir``: either the official ``cifar-10-batches-py`` folder or a class-folder
image tree (``train/<class>/*.jpg|png``, ``test/<class>/...``). Each split is decoded
once into a uint8 tensor (N, 3, 32, 32) and cached on disk, so the second run starts in
seconds. Batches are a pure function of ``(data_seed, step)``: a resumed run, or a
paired run with another model, sees exactly the same examples in the same order.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from landscape.errors import UserError
from landscape.files import atomic_write

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_VERSION = 1


@dataclass
class Split:
    """One split: ``inputs`` (uint8 images or float features) and ``targets``."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.inputs.to(device), self.targets.to(device))

    def subset(self, n: int, seed: int = 0) -> Split:
        """``n`` examples drawn by a seeded permutation (files are often sorted by class), in
        their original order; the same ``seed`` gives every compared run the same subset."""
        if n <= 0 or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=seeded_generator(seed, 3))[:n].sort().values
        return Split(self.inputs[idx], self.targets[idx])


def fingerprint(*splits: Split) -> str:
    """sha256 over the splits' inputs and targets (bytes, dtype and shape): two runs with the same
    fingerprint trained on the same bits (a JPEG tree decoded by another decoder differs)."""
    h = hashlib.sha256()
    for split in splits:
        for t in (split.inputs, split.targets):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def seeded_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator (on ``device``) whose stream depends on every key (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))


def default_cache_dir() -> Path:
    return Path(os.environ.get("LANDSCAPE_CACHE", Path.home() / ".cache" / "landscape"))


# ---------------------------------------------------------------- CIFAR-10 loading


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what the official batches hold (dicts, lists, strings, numbers and numpy
    uint8 arrays); any other global a crafted file names is refused before it is built."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _load_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = _BatchUnpickler(f, encoding="latin1").load()
    if not isinstance(entry, dict) or "data" not in entry:
        raise pickle.UnpicklingError("not a CIFAR batch (no 'data' entry)")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise pickle.UnpicklingError(f"'data' is {data.dtype} {data.shape}, not uint8 (N, 3072)")
    labels = entry.get("labels", entry.get("fine_labels"))
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise pickle.UnpicklingError("'labels' is not a list of integers, one per image")
    return {"data": data, "labels": labels}


def _read_official_batches(folder: Path) -> dict[str, Split]:
    """The pickled ``cifar-10-batches-py`` layout (data_batch_1..5, test_batch), read with a
    restricted unpickler (:class:`_BatchUnpickler`): a crafted file cannot run code."""
    out = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images, labels = [], []
        for name in names:
            path = folder / name
            try:
                entry = _load_batch(path)
                images.append(entry["data"].reshape(-1, 3, 32, 32))
                labels.extend(entry["labels"])
            except FileNotFoundError:
                raise UserError(
                    f"CIFAR-10 batch file '{path}' is missing; the folder must hold data_batch_1..5 and test_batch"
                ) from None
            except Exception as exc:  # truncated, foreign or crafted pickle
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise UserError(
                    f"CIFAR-10 batch file '{path}' is unreadable ({reason}); re-extract the official archive"
                ) from None
        out[split] = Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64))
    return out


def _class_dirs(split_dir: Path) -> list[Path]:
    """The class folders of a split: hidden ones (.ipynb_checkpoints, ...) are not classes, and a
    folder that is a symbolic link must stay inside the data tree."""
    root = split_dir.resolve()
    dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        target = d.resolve()
        if d.is_symlink() and root.parent not in target.parents:
            raise UserError(
                f"class folder '{d}' links outside the data set (to '{target}'); copy the images in or remove the link"
            )
    names = [d.name for d in dirs]
    if set(names) == set(CIFAR10_CLASSES):  # CIFAR-10's label order, not the alphabet's
        dirs = [split_dir / c for c in CIFAR10_CLASSES]
    return dirs


def _decode(path: Path, size: int | None = None, gray: bool = False) -> np.ndarray:
    """One image as (H, W, C) uint8: CIFAR-10 trees must be 32x32 colour (``size=None``); a general
    image folder is converted to grayscale or RGB and resized to ``size`` x ``size``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            img = np.asarray(im)
    except Exception:
        raise UserError(f"cannot decode image '{path}'; remove or replace it") from None
    if img.ndim == 2:
        img = img[:, :, None]
    if size is None and img.shape != (32, 32, 3):
        raise UserError(
            f"image '{path}' is {img.shape[1]}x{img.shape[0]} pixels; CIFAR-10 images are 32x32 "
            "(for other image folders use data.dataset=folder)"
        )
    return img


def _is_gray(paths: list[Path]) -> bool:
    """A folder data set is grayscale when its first image is (mode L, LA, 1 or I)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # a decompression-bomb size is said once, by the decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(paths[0]) as im:
                return im.mode in ("L", "LA", "1", "I", "I;16")
    except Exception:
        raise UserError(f"cannot decode image '{paths[0]}'; remove or replace it") from None


def _read_image_tree(root: Path, size: int | None = None) -> dict[str, Split]:
    """``root/{train,test}/<class>/*.jpg|png``; labels follow CIFAR-10's order when the names match,
    the alphabet's otherwise. ``size=None``: CIFAR-10 (32x32 colour, checked); else any image
    size, resized to ``size`` x ``size``, grayscale when the first image is."""
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise UserError(
                f"'{root}' has no {split}/ folder; an image-folder data set is "
                "train/<class>/*.png and test/<class>/*.png"
            )
    train_classes = [d.name for d in _class_dirs(root / "train")]
    if not train_classes:
        raise UserError(f"'{root / 'train'}' has no class folders; expected train/<class>/*.png")
    out, gray = {}, None
    for split in ("train", "test"):
        dirs = _class_dirs(root / split)
        if [d.name for d in dirs] != train_classes:
            raise UserError(
                f"'{root / split}' has classes {[d.name for d in dirs]} but train has "
                f"{train_classes}; both splits need the same class folders"
            )
        paths, labels = [], []
        for label, d in enumerate(dirs):
            files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise UserError(f"no .jpg/.png images under '{root / split}'")
        if gray is None:
            gray = size is not None and _is_gray(paths)
        from PIL import Image

        with (
            warnings.catch_warnings(record=True) as caught,
            ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        ):  # PIL decodes without the GIL
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            images = np.stack(list(pool.map(partial(_decode, size=size, gray=gray), paths, chunksize=256)))
        bombs = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
        if bombs:  # one line for the data set, not one warning per image
            warnings.warn(
                f"{len(bombs)} images under '{root / split}' exceed PIL's decompression-bomb size "
                f"({Image.MAX_IMAGE_PIXELS:,} pixels); they were decoded and resized to {size}",
                stacklevel=2,
            )
        for w in caught:
            if not issubclass(w.category, Image.DecompressionBombWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        out[split] = Split(
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels, dtype=torch.int64)
        )
    return out


def _tree_fingerprint(root: Path) -> str:
    """The cache key of an image tree: its path, and the name, size and modification time of every
    image (an image edited in place changes the key, so the cache is rebuilt, never stale)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{root.resolve()}".encode(errors="surrogateescape"))
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        for d in _class_dirs(root / split):
            for p in sorted(d.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
                    st = p.stat()
                    h.update(
                        f"{split}/{d.name}/{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode(errors="surrogateescape")
                    )
    return h.hexdigest()[:16]


def _cached(cache_file: Path, build) -> dict[str, Split]:
    if cache_file.is_file():
        try:
            raw = torch.load(cache_file, weights_only=True)
            splits = {k: Split(v["inputs"], v["targets"]) for k, v in raw.items()}
            if set(splits) >= {"train", "test"} and not any(
                split_problem(k, splits[k], True) for k in ("train", "test")
            ):
                return splits
        except Exception:
            pass  # a corrupt or incomplete cache is rebuilt, never trusted
    splits = build()
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    state = {k: {"inputs": s.inputs, "targets": s.targets} for k, s in splits.items()}
    buffer = io.BytesIO()  # serialised in memory: a full disk then fails as an OSError naming the cache file
    torch.save(state, buffer)
    atomic_write(cache_file, buffer.getvalue())
    return splits


def find_tree(data_dir: Path) -> Path | None:
    """The folder holding train/ and test/: ``data_dir`` itself or one folder down (as archives extract)."""
    if data_dir.is_dir():
        for c in [data_dir] + sorted(p for p in data_dir.iterdir() if p.is_dir()):
            if (c / "train").is_dir() and (c / "test").is_dir():
                return c
    return None


def find_layout(data_dir: Path) -> tuple[str, Path]:
    """Which layout ``data_dir`` holds: ('batches', folder) or ('tree', folder)."""
    candidates = [data_dir, data_dir / "cifar-10-batches-py"]
    for c in candidates:
        if (c / "data_batch_1").is_file():
            return "batches", c
    tree = find_tree(data_dir)
    if tree is not None:
        return "tree", tree
    raise UserError(
        f"no CIFAR-10 found in '{data_dir}': expected cifar-10-batches-py/ (data_batch_1..5, "
        "test_batch) or train/<class>/*.jpg and test/<class>/*.jpg"
    )


def load_cifar10(
    data_dir: str | Path | None = None, cache_dir: str | Path | None = None, download: bool = True
) -> dict[str, Split]:
    """CIFAR-10 train and test splits as uint8 (N, 3, 32, 32) images and int64 labels (on the CPU)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        if not data_dir.exists():
            raise UserError(
                f"--data-dir '{data_dir}' does not exist; pass the folder holding "
                "cifar-10-batches-py/ or train/<class>/ and test/<class>/ images"
            )
        layout, folder = find_layout(data_dir)
        if layout == "batches":
            return _read_official_batches(folder)
        return _cached(cache_dir / f"cifar10-tree-{_tree_fingerprint(folder)}.pt", lambda: _read_image_tree(folder))

    root = cache_dir / "cifar10"
    if (root / "cifar-10-batches-py" / "data_batch_1").is_file() or download:
        try:
            from torchvision.datasets import CIFAR10

            splits = {}
            for split in ("train", "test"):
                ds = CIFAR10(str(root), train=split == "train", download=download)
                splits[split] = Split(
                    torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(ds.targets, dtype=torch.int64),
                )
            return splits
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(
                f"CIFAR-10 not found in '{root}' and the download failed ({reason}); "
                "pass --data-dir PATH to an extracted copy"
            ) from None
    raise UserError(f"CIFAR-10 not found in '{root}'; pass --data-dir PATH to an extracted copy")


# ---------------------------------------------------------------- other image data sets

# data.dataset names of torchvision's data sets: (class, folder torchvision makes under its root)
TORCHVISION_SETS = {
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
    "svhn": ("SVHN", "svhn"),
}
IMAGE_DATASETS = ("cifar10", *TORCHVISION_SETS, "folder")
DATASETS = (
    *IMAGE_DATASETS,
    "synthetic",
    "gaussian",
)  # data.dataset: synthetic (generated images, for tests), gaussian (DLN regression)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to (N, C, size, size), bilinear with antialiasing (a no-op at the same size)."""
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for chunk in images.split(4096):  # bounded memory for 60,000 images
        x = torch.nn.functional.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _torchvision_split(name: str, root: Path, train: bool, download: bool) -> Split:
    import torchvision.datasets as tvd

    cls_name, _ = TORCHVISION_SETS[name]
    if name == "cifar100":  # read with the restricted unpickler (as CIFAR-10): a crafted file cannot run code
        folder = root / "cifar-100-python"
        if download and not (folder / "train").is_file():
            tvd.CIFAR100(str(root), train=train, download=True)  # md5-verified download, then read below
        try:
            entry = _load_batch(folder / ("train" if train else "test"))
        except FileNotFoundError:
            raise UserError(
                f"CIFAR-100 not found in '{folder}'; pass --data-dir to the folder holding cifar-100-python/"
            ) from None
        except Exception as exc:
            raise UserError(
                f"CIFAR-100 file in '{folder}' is unreadable ({str(exc)[:200]}); re-extract the official archive"
            ) from None
        return Split(
            torch.from_numpy(entry["data"].reshape(-1, 3, 32, 32)).contiguous(),
            torch.tensor(entry["labels"], dtype=torch.int64),
        )
    cls = getattr(tvd, cls_name)
    ds = (
        cls(str(root), split="train" if train else "test", download=download)
        if name == "svhn"
        else cls(str(root), train=train, download=download)
    )
    if name == "svhn":  # (N, 3, 32, 32) numpy, labels 0..9
        return Split(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels, dtype=torch.int64))
    data = torch.as_tensor(ds.data)  # MNIST / Fashion-MNIST: (N, 28, 28) uint8
    return Split(data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64))


def load_torchvision(
    name: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None, download: bool = True
) -> dict[str, Split]:
    """One of :data:`TORCHVISION_SETS` as uint8 (N, C, H, W) images: from ``data_dir`` (the root
    torchvision downloads into, e.g. holding ``MNIST/raw/``) without a download, or downloaded
    into the cache."""
    if data_dir is not None:
        root, download = Path(data_dir).expanduser(), False
        if not root.exists():
            raise UserError(
                f"--data-dir '{root}' does not exist; pass the folder torchvision downloaded "
                f"{name} into (it holds {TORCHVISION_SETS[name][1]}/)"
            )
    else:
        root = (Path(cache_dir) if cache_dir else default_cache_dir()) / name
    try:
        return {split: _torchvision_split(name, root, split == "train", download) for split in ("train", "test")}
    except UserError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        how = (
            "pass --data-dir to a downloaded copy"
            if data_dir is None
            else f"check that '{root}' holds {TORCHVISION_SETS[name][1]}/ as torchvision downloads it"
        )
        raise UserError(f"{name} could not be loaded from '{root}' ({reason}); {how}") from None


def load_folder(data_dir: str | Path | None, size: int, cache_dir: str | Path | None = None) -> dict[str, Split]:
    """Any image-folder tree ``train/<class>/*`` and ``test/<class>/*`` (any size, grayscale or
    colour, any number of classes), resized to ``size`` x ``size`` and cached."""
    if data_dir is None:
        raise UserError("data.dataset=folder needs --data-dir: the folder holding train/<class>/ and test/<class>/")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"--data-dir '{root}' is not a folder; pass the folder holding train/<class>/ and test/<class>/ images"
        )
    tree = find_tree(root)
    if tree is None:
        raise UserError(
            f"'{root}' has no train/ and test/ folders; an image-folder data set is "
            "train/<class>/*.png and test/<class>/*.png"
        )
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return _cached(cache_dir / f"folder-{size}-{_tree_fingerprint(tree)}.pt", lambda: _read_image_tree(tree, size))


def channel_stats(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, on the 0..1 scale."""
    x = split.inputs.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)  # a constant channel is left unscaled rather than divided by 0
    return tuple(mean.tolist()), tuple(std.tolist())


def pixel_stats(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation (C, H, W) of uint8 images, on the 0..1 scale: Cohen et al.'s
    centring and standardisation of every input feature."""
    x = split.inputs.double() / 255.0
    return x.mean(0).float(), x.std(0).clamp_min(1e-3).float()


# ---------------------------------------------------------------- generated data


def synthetic_images(n: int, seed: int, num_classes: int = 10) -> Split:
    """Learnable CIFAR-shaped data for tests: each class a smooth colour pattern plus noise."""
    g = seeded_generator(seed, 7)
    patterns = torch.rand(num_classes, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(patterns, size=32, mode="bilinear", align_corners=False)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = 0.6 * patterns[labels] + 0.4 * torch.rand(n, 3, 32, 32, generator=g)
    return Split((images * 255).round().clamp(0, 255).to(torch.uint8), labels)


def gaussian_regression(n: int, dim: int, seed: int, sample_seed: int) -> Split:
    """x ~ N(0, I), y = A x with A a fixed dim x dim Gaussian matrix chosen by ``seed``."""
    A = torch.randn(dim, dim, generator=seeded_generator(seed, 11))
    x = torch.randn(n, dim, generator=seeded_generator(seed, 13, sample_seed))
    return Split(x, x @ A.T)


def load_splits(
    dataset: str,
    data_dir: str | Path | None,
    synthetic_size: int = 256,
    gaussian_samples: int = 1000,
    gaussian_dim: int = 10,
    gaussian_seed: int = 0,
    image_size: int = 32,
) -> dict[str, Split]:
    """A data set's train and test splits, images at ``image_size`` (CIFAR-10, synthetic and
    gaussian data keep their own shape)."""
    if dataset == "cifar10":
        return load_cifar10(data_dir)
    if dataset == "synthetic":
        return {"train": synthetic_images(synthetic_size, 0), "test": synthetic_images(synthetic_size, 1)}
    if dataset == "gaussian":
        return {
            "train": gaussian_regression(gaussian_samples, gaussian_dim, gaussian_seed, 0),
            "test": gaussian_regression(gaussian_samples, gaussian_dim, gaussian_seed, 1),
        }
    if dataset in TORCHVISION_SETS:
        splits = load_torchvision(dataset, data_dir)
        return {k: Split(resize_images(v.inputs, image_size), v.targets) for k, v in splits.items()}
    if dataset == "folder":
        return load_folder(data_dir, image_size)
    raise UserError(f"unknown dataset '{dataset}'")


MAX_CLASSES = 100_000  # a label beyond this is a corrupt file, not a classifier's class


def split_problem(name: str, split: Split | None, image: bool) -> str | None:
    """What is wrong with a loaded split (None if nothing): checked once, where data is loaded, so a
    bad label or shape ends in one line before a run directory exists."""
    if split is None:
        return f"it has no {name} split"
    x, y = split.inputs, split.targets
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        return f"its {name} split is not a pair of tensors"
    if len(x) == 0:
        return f"its {name} split has no examples"
    if len(x) != len(y):
        return f"its {name} split has {len(x)} inputs but {len(y)} labels"
    if image:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3) or min(x.shape[-2:]) < 8:
            return (
                f"its {name} images have shape {tuple(x.shape)[1:]} ({x.dtype}); expected uint8 (1 or 3, H, W), "
                "H and W >= 8"
            )
        if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            return f"its {name} labels are not one integer per image"
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= MAX_CLASSES:
            return f"its {name} labels run from {lo} to {hi}; labels are classes 0, 1, ... (below {MAX_CLASSES})"
    elif x.dim() != 2 or y.dim() != 2 or not x.is_floating_point():
        return f"its {name} split is not (examples, features) regression data"
    return None


def load_data(d, data_dir: str | Path | None) -> dict[str, Split]:
    """The splits a :class:`landscape.config.DataConfig` names, checked (labels, counts, shapes)."""
    splits = load_splits(
        d.dataset, data_dir, d.synthetic_size, d.gaussian_samples, d.gaussian_dim, d.gaussian_seed, d.image_size
    )
    for name in ("train", "test"):
        problem = split_problem(name, splits.get(name) if isinstance(splits, dict) else None, d.dataset != "gaussian")
        if problem:
            where = f" in '{data_dir}'" if data_dir is not None else ""
            raise UserError(
                f"data set {d.dataset}{where} cannot be used: {problem}; re-extract or fix the data "
                "(a cached copy under LANDSCAPE_CACHE can be deleted)"
            )
    return splits


# ---------------------------------------------------------------- batches


def augment_batch(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a whole NCHW batch, tensor ops only."""
    n, _, h, w = x.shape
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=g).to(x.device)
    flips = (torch.rand(n, generator=g) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = shifts[:, :1] + torch.arange(h, device=x.device)  # (n, h)
    cols = shifts[:, 1:] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    idx_rows = rows[:, None, :, None].expand(n, x.shape[1], h, padded.shape[3])
    out = padded.gather(2, idx_rows)
    idx_cols = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, idx_cols)


class Batches:
    """Seeded batches from a tensor-resident split: ``batches(step)`` is pure in (seed, step).

    Each epoch is a permutation drawn from a generator keyed by (seed, epoch); the last
    incomplete batch of an epoch is dropped. Image batches are converted to float,
    optionally augmented, and normalised on the device, a whole batch at a time.
    ``batch_size=0`` (or >= N) gives the whole split every step (full-batch descent).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        seed: int,
        augment: bool = False,
        device: torch.device | str = "cpu",
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        self.split = split.to(device)
        self.n = len(split)
        self.batch_size = self.n if batch_size <= 0 or batch_size >= self.n else batch_size
        self.steps_per_epoch = self.n // self.batch_size
        self.seed = seed
        self.augment = augment
        self.is_image = split.inputs.dtype == torch.uint8
        if self.is_image:  # mean and std per channel (C,), or per pixel (C, H, W)

            def shaped(v):
                t = torch.as_tensor(v, dtype=torch.float32, device=device)
                return t.view(1, -1, 1, 1) if t.dim() == 1 else t.unsqueeze(0)

            std_t = shaped(std)
            self.scale = 1.0 / (255.0 * std_t)
            self.shift = -shaped(mean) / std_t
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=seeded_generator(self.seed, epoch))
            self._epoch = epoch
        return self._perm

    def indices(self, step: int) -> torch.Tensor:
        """Example indices (CPU) of batch number ``step`` (0-based)."""
        if self.batch_size == self.n:
            return torch.arange(self.n)
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def prepare(self, inputs: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """uint8 images -> normalised float (augmented when ``step`` is given and augment is on)."""
        if not self.is_image:
            return inputs
        x = inputs.float()
        if self.augment and step is not None:
            x = augment_batch(x, seeded_generator(self.seed, step, 1))
        return x * self.scale + self.shift

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batch_size == self.n:
            inputs, targets = self.split.inputs, self.split.targets
        else:
            idx = self.indices(step).to(self.split.inputs.device, non_blocking=True)
            inputs, targets = self.split.inputs[idx], self.split.targets[idx]
        return self.prepare(inputs, step), targets

    def eval_batches(self, batch_size: int = 1000):
        """The whole split in order, without augmentation (for test-set evaluation)."""
        for i in range(0, self.n, batch_size):
            yield self.prepare(self.split.inputs[i : i + batch_size]), self.split.targets[i : i + batch_size]
