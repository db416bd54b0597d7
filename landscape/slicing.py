"""``landscape slice``: loss-landscape slices of a trained run, written beside it.

A slice of run ``R`` lives in ``R/slices/<name>/``: ``spec.json`` (everything that fixes it),
``directions.pt`` (the directions, so every worker and a resume use the same ones),
``points-<k>-of-<n>.jsonl`` (one line per finished point, appended as it is done) and, when
every point is done, ``slice.json`` (the grid in order, with the point's own loss and what the
directions are: Hessian eigenvalues, PCA variance explained and the trajectory's coordinates).
A killed slice resumes from the points already on disk; a grid split over workers gives
exactly the points of one process (each point depends only on the spec and directions).

What the folder guarantees (docs/faults.md): one writer at a time (the parent holds the folder's lock,
each worker its shard file's); a resume continues only the same spec on the same checkpoint (its
sha256, whatever path it is reached by) and refuses one whose checkpoint changed; a torn last line is
cut, a point line that is not one of the grid's is dropped (and recomputed); workers stop when their
parent dies; ``--force`` removes only the slice's own files; nothing is written through a symbolic link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from landscape.errors import UserError, quote
from landscape.files import LOCK_NAME, FolderLock, atomic_write, is_temporary, read_text, regular
from landscape.probes import slices as S
from landscape.probes.records import json_safe
from landscape.probes.rundir import SLICE_NAMES
from landscape.runs import read_env

MAX_POINTS = 40_000  # 200 x 200: beyond that a grid is a typo (a billion points is years of forwards)
MAX_SUBSET = 1_000_000
DEFAULT_SUBSET = 1024  # examples, or the whole split when it is smaller
MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds
SLICE_FILES = SLICE_NAMES


@dataclass(frozen=True)
class SliceSpec:
    directions: str = "random"  # random | hessian | interpolate | pca
    dims: int = 2
    grid: int = 21  # points per side
    lo: float = -1.0
    hi: float = 1.0
    bn: str = "recompute"  # train | recompute | checkpoint
    bn_batches: int = 4  # batches the recompute mode's statistics are averaged over
    split: str = "train"
    subset: int = 0  # examples the loss is measured on (a seeded subset of the split); 0: 1024, or all if fewer
    batch_size: int = 256
    seed: int = 0
    ignore: str = "biasbn"
    to: str | None = None  # interpolate: the other point's checkpoint (default: the run's initialisation)
    trajectory: tuple[str, ...] = field(default_factory=tuple)  # pca: checkpoint files, in training order

    def check(self) -> None:
        if self.directions not in S.KINDS:
            raise UserError(f"--directions must be one of {', '.join(S.KINDS)}; got {quote(self.directions)}")
        if self.dims not in (1, 2):
            raise UserError(f"--dims must be 1 or 2; got {self.dims}")
        if self.directions == "interpolate" and self.dims != 1:
            raise UserError("--directions interpolate is a line: pass --dims 1")
        if self.grid < 2:
            raise UserError(f"--grid must be at least 2 points per side; got {self.grid}")
        if self.grid**self.dims > MAX_POINTS:
            raise UserError(
                f"--grid {self.grid} in {self.dims}D is {self.grid**self.dims:,} points; at most "
                f"{MAX_POINTS:,} (e.g. --grid {int(MAX_POINTS ** (1 / self.dims))})"
            )
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise UserError(f"--range must be a:b with a < b; got {self.lo:g}:{self.hi:g}")
        if self.bn not in S.BN_MODES:
            raise UserError(f"--bn must be one of {', '.join(S.BN_MODES)}; got {quote(self.bn)}")
        if self.split not in ("train", "test"):
            raise UserError(f"--split must be train or test; got {quote(self.split)}")
        if not 0 <= self.subset <= MAX_SUBSET:
            raise UserError(f"--subset must be between 1 and {MAX_SUBSET:,} examples; got {self.subset}")
        if not 1 <= self.batch_size <= MAX_SUBSET:
            raise UserError(f"--batch-size must be between 1 and {MAX_SUBSET:,}; got {self.batch_size}")
        if not 1 <= self.bn_batches <= 10_000:
            raise UserError(f"--bn-batches must be between 1 and 10,000; got {self.bn_batches}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(
                f"--seed must be between 0 and 2^63 - 1; got a number of {len(str(abs(self.seed)))} digits"
                if abs(self.seed) > 10**20
                else f"--seed must be between 0 and 2^63 - 1; got {self.seed}"
            )
        if self.ignore not in S.IGNORE:
            raise UserError(f"--ignore must be one of {', '.join(S.IGNORE)}; got {quote(self.ignore)}")
        if self.directions == "pca" and len(self.trajectory) < 2:
            raise UserError(
                "--directions pca needs the trajectory: pass --trajectory CHECKPOINT at least twice "
                "(with the run's own checkpoint as the last point that makes 3)"
            )

    def default_name(self) -> str:
        return f"{self.directions}-{self.dims}d-{self.bn}"


def parse_range(text: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"--range must be a:b (e.g. -1:1); got {quote(text)}") from None
    return a, b


# ------------------------------------------------------------------ loading what a slice needs


@dataclass
class Loaded:
    model: torch.nn.Module
    loss_fn: object
    weights: dict  # the run's parameters (the slice's origin)
    buffers: dict
    batches: list  # (uint8 or float inputs, targets) on the device
    prepare: object
    setup: object
    cfg: object
    spec: SliceSpec  # with its subset resolved


def _checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"checkpoint {quote(str(path))} does not exist; pass a run directory or its checkpoint.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint {quote(str(path))} is unreadable ({reason}); pass another") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise UserError(
            f"{quote(str(path))} is not a landscape checkpoint (no model state); pass a run's checkpoint.pt"
        )
    return ckpt


def locate(target: str | Path) -> tuple[Path, Path]:
    """(run directory, checkpoint file) of a run directory or a checkpoint inside one."""
    p = Path(target)
    if p.is_dir():
        return p, p / "checkpoint.pt"
    if p.is_file():
        return p.parent, p
    raise UserError(
        f"{quote(str(p))} does not exist; pass a run directory (e.g. results/quick/runs/NAME) or a checkpoint file"
    )


def _weights_of(ckpt: dict, like: dict, path) -> dict:
    model = ckpt["model"]
    missing = [n for n in like if n not in model]
    wrong = [
        n
        for n in like
        if n in model and (not torch.is_tensor(model[n]) or tuple(model[n].shape) != tuple(like[n].shape))
    ]
    if missing or wrong:
        what = f"has no '{missing[0]}'" if missing else f"has '{wrong[0]}' of another shape or type"
        raise UserError(
            f"checkpoint {quote(str(path))} is of another model (it {what}); pass a checkpoint of this run's model"
        )
    out = {n: model[n].to(like[n]).contiguous() for n in like}  # a channels-last run's weights: see load()
    bad = next((n for n, w in out.items() if not torch.isfinite(w).all()), None)
    if bad is not None:
        raise UserError(
            f"checkpoint {quote(str(path))} has weights that are not finite ('{bad}': a diverged run); "
            "a slice around them is not a landscape: pass another checkpoint"
        )
    return out


def _buffers_of(ckpt: dict, model: torch.nn.Module, path, dev) -> dict:
    """The checkpoint's buffers (BatchNorm's running statistics), checked against the model's."""
    out = {}
    for n, b in model.named_buffers():
        saved = ckpt["model"].get(n)
        if saved is None:
            continue
        if not torch.is_tensor(saved) or tuple(saved.shape) != tuple(b.shape):
            raise UserError(
                f"checkpoint {quote(str(path))} has buffer '{n}' of another shape or type than the "
                "model's; pass a checkpoint of this run's model"
            )
        out[n] = saved.to(dev)
    return out


def trained_from(run_dir: Path) -> str | None:
    """The data folder a run was trained from (its env.json's ``data_dir``), if it still exists; the slice checks
    that its data are the run's own (their fingerprint) as for any --data-dir."""
    found = read_env(run_dir).get("data_dir")
    return found if isinstance(found, str) and Path(found).is_dir() else None


def load(run_dir: Path, ckpt_path: Path, spec: SliceSpec, data_dir, device: str | None) -> Loaded:
    """The run's model at its checkpoint, and the slice's data, every check done; ``spec.subset`` 0 is resolved."""
    from landscape.data import load_data
    from landscape.losses import LOSSES
    from landscape.train import _setup, resolve_device

    ckpt = _checkpoint(ckpt_path)
    cfg = run_config(run_dir, ckpt)
    dev = resolve_device(device or cfg.device)
    splits = load_data(cfg.data, data_dir)
    setup = _setup(cfg, dev, splits, None)  # the model at its initialisation, from the config's seed
    trained_on = read_env(run_dir).get("data_sha256")
    if isinstance(trained_on, str) and setup.data_sha256 and setup.data_sha256 != trained_on:
        raise UserError(
            f"the data loaded for {quote(str(run_dir))} are not those it was trained on (fingerprint "
            f"{setup.data_sha256[:12]}, the run's {trained_on[:12]}); pass --data-dir to the run's own data"
        )
    # contiguous tensors: a point's loss is then bitwise the same however the grid is split over workers or Ray
    # tasks (oneDNN's channels-last convolutions, the trainer's CPU default, differ in the last bits between a
    # process and its workers); the weights are the checkpoint's either way
    model = setup.model.to(memory_format=torch.contiguous_format)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    like = {n: p.detach() for n, p in model.named_parameters() if n in names}
    weights = _weights_of(ckpt, like, ckpt_path)
    buffers = _buffers_of(ckpt, model, ckpt_path, dev)
    split = setup.train_split if spec.split == "train" else setup.test_batches.split
    n = len(split)
    subset = spec.subset or min(DEFAULT_SUBSET, n)
    if subset > n:
        raise UserError(f"--subset {subset} is more than the {spec.split} split's {n} examples; pass at most {n}")
    normalised = any(isinstance(m, S.NORM_TYPES) for m in model.modules())
    if normalised and spec.bn in ("train", "recompute") and spec.batch_size < 2:
        raise UserError(f"--bn {spec.bn} normalises each batch by its own statistics: pass --batch-size 2 or more")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed))[:subset].sort().values
    inputs, targets = (
        split.inputs[idx.to(split.inputs.device)].to(dev),
        split.targets[idx.to(split.targets.device)].to(dev),
    )
    starts = list(range(0, subset, spec.batch_size))
    if len(starts) > 1 and subset - starts[-1] == 1:  # a last batch of one example: BatchNorm cannot normalise it
        starts.pop()
    batches = [(inputs[a:b], targets[a:b]) for a, b in zip(starts, [*starts[1:], subset])]
    resolved = SliceSpec(**{**asdict(spec), "subset": subset})
    return Loaded(model, LOSSES[cfg.loss], weights, buffers, batches, setup.test_batches.prepare, setup, cfg, resolved)


def run_config(run_dir: Path, ckpt: dict):
    """The run's config (its probes' sections aside: a probe registered in the training process need not be in
    this one, and a slice runs none), from config.yaml or the checkpoint."""
    import yaml

    from landscape.config import from_dict

    for source in ("file", "checkpoint"):
        try:
            d = yaml.safe_load(read_text(run_dir / "config.yaml")) if source == "file" else ckpt.get("config")
        except (OSError, yaml.YAMLError, RecursionError, ValueError):
            continue
        if isinstance(d, dict):
            try:
                return from_dict({k: v for k, v in d.items() if k != "probes"})
            except (UserError, ValueError, TypeError):
                continue
    raise UserError(
        f"{quote(str(run_dir))} has no readable config.yaml (and the checkpoint no config); pass a run "
        "made by landscape train or an experiment"
    )


def build_directions(spec: SliceSpec, L: Loaded) -> tuple[list[dict], dict]:
    """The slice's directions and what describes them (eigenvalues, variance explained, ...)."""
    init = {n: p.detach().clone() for n, p in L.model.named_parameters() if n in L.weights}
    if spec.directions == "random":
        return [S.random_direction(L.weights, spec.seed + k, spec.ignore) for k in range(spec.dims)], {}
    if spec.directions == "hessian":
        x, y = L.batches[0]
        with torch.enable_grad():
            dirs, values = S.hessian_directions(
                L.model,
                L.loss_fn,
                (L.prepare(x), y),
                k=spec.dims,
                seed=spec.seed,
                params=L.weights,
                buffers=L.buffers,
                eval_mode=spec.bn != "train",
            )
        return dirs, {"eigenvalues": values, "hessian_batch": len(y)}
    if spec.directions == "interpolate":
        if spec.to:
            _, path = locate(spec.to)
            end = _weights_of(_checkpoint(path), L.weights, path)
            return [S.interpolation(L.weights, end)], {"from": "run", "to": spec.to}
        return [S.interpolation(init, L.weights)], {"from": "initialisation", "to": "run"}  # t=0 init, t=1 the run
    trajectory = []
    for t in spec.trajectory:
        _, path = locate(t)
        trajectory.append(_weights_of(_checkpoint(path), L.weights, path))
    try:
        plane = S.pca_plane([*trajectory, L.weights], spec.ignore)
    except ValueError as exc:  # a trajectory that does not move
        raise UserError(f"--directions pca: {exc}; pass checkpoints from different steps of the run") from None
    return list(plane.directions[: spec.dims]), {"explained": list(plane.explained), "trajectory": plane.coords}


def origin_of(spec: SliceSpec, L: Loaded, meta: dict) -> dict:
    if spec.directions == "interpolate" and meta.get("from") == "initialisation":
        return {n: p.detach().clone() for n, p in L.model.named_parameters() if n in L.weights}
    return L.weights


# ------------------------------------------------------------------ shards


def shard_file(folder: Path, k: int, n: int) -> Path:
    return folder / f"points-{k}-of-{n}.jsonl"


def done_points(folder: Path, coords: list | None = None, problems: list | None = None) -> dict[int, dict]:
    """Every usable point on disk, from any shard file: a line that is not JSON (a torn one, from a kill), or
    whose point is not one of the grid's (an index out of range, coordinates off the grid, a loss that is not a
    number >= 0, an accuracy outside [0, 1]) is left out, so its point is computed again; said in ``problems``.
    Only regular files are read (a FIFO named like a shard would block)."""
    out = {}
    for f in sorted(folder.glob("points-*.jsonl")):
        if not regular(f) or f.is_symlink():
            if problems is not None:
                problems.append(f"{f.name} is not a regular file: not read")
            continue
        for number, line in enumerate(read_text(f).splitlines(), 1):
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a torn line, cut when the shard next appends
            why = point_problem(rec, coords)
            if why:
                if problems is not None:
                    problems.append(f"{f.name} line {number}: {why}")
                continue
            out[rec["i"]] = rec
    return out


def point_problem(rec, coords: list | None) -> str | None:
    if not isinstance(rec, dict) or isinstance(rec.get("i"), bool) or not isinstance(rec.get("i"), int):
        return "not a point"
    i = rec["i"]
    if coords is not None:
        if not 0 <= i < len(coords):
            return "an index outside the grid"
        if not isinstance(rec.get("coords"), list) or [
            float(c) for c in rec["coords"] if isinstance(c, (int, float))
        ] != list(coords[i]):
            return "coordinates that are not the grid's"
    loss, acc = rec.get("loss"), rec.get("acc")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float)) or not loss >= 0):
        return "a loss that is not a number >= 0"
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1):
        return "an accuracy outside [0, 1]"
    return None


def _cut_torn_line(path: Path) -> None:
    """A shard a kill left with half a line at its end: cut it, so the next point starts a line of its own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def run_shard(
    folder: str, data_dir, device, k: int, n: int, threads: int | None = None, parent: int | None = None
) -> int:
    """Compute shard ``k`` of ``n`` of the slice in ``folder``; returns the points it computed. A worker given its
    ``parent``'s pid stops when the parent is gone (a killed ``landscape slice`` leaves no worker writing)."""
    if threads:
        torch.set_num_threads(threads)
    folder = Path(folder)
    meta = read_spec(folder)
    spec = SliceSpec(**{**meta["spec"], "trajectory": tuple(meta["spec"]["trajectory"])})
    L = load(Path(meta["run"]), Path(meta["checkpoint"]), spec, data_dir, device)
    directions, origin = read_directions(folder, L)
    coords = S.grid_coords(spec.dims, spec.grid, spec.lo, spec.hi)
    bn_batches = [x for x, _ in L.batches[: spec.bn_batches]] if spec.bn == "recompute" else None
    path = shard_file(folder, k, n)
    with open(path, "a") as f:
        hold(f)  # one writer per shard: a worker of a killed slice still finishing its point goes first
        _cut_torn_line(path)
        done = done_points(folder, coords)
        todo = [i for i in S.shard(len(coords), k, n) if i not in done]

        def write(i, v):
            if parent is not None and os.getppid() != parent:
                os._exit(0)  # the slice that started this worker is gone: write nothing more
            f.write(json.dumps(json_safe({"i": i, "coords": list(coords[i]), "loss": v.loss, "acc": v.acc})) + "\n")
            f.flush()

        S.evaluate_slice(
            L.model,
            L.loss_fn,
            directions,
            coords,
            L.batches,
            bn=spec.bn,
            origin=origin,
            buffers=L.buffers,
            bn_batches=bn_batches,
            prepare=L.prepare,
            indices=todo,
            on_point=write,
        )
    return len(todo)


def hold(f) -> None:
    """An exclusive lock on an open file, waited for (released when the file is closed or the process ends)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): shards are not guarded there
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def _spawned(args):  # a worker process's entry
    return run_shard(*args)


def _worker_start() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the pool


def read_spec(folder: Path) -> dict:
    """A slice's ``spec.json``, checked: a damaged one is refused in one line."""
    try:
        meta = json.loads(read_text(folder / "spec.json"))
    except (OSError, ValueError, RecursionError):
        meta = None
    spec = meta.get("spec") if isinstance(meta, dict) else None
    if (
        not isinstance(spec, dict)
        or set(spec) != {f.name for f in SliceSpec.__dataclass_fields__.values()}
        or not isinstance(meta.get("checkpoint"), str)
        or not isinstance(meta.get("run"), str)
    ):
        raise UserError(f"slice {quote(str(folder))} has a damaged spec.json; pass --force to compute it again")
    return meta


def read_directions(folder: Path, L: Loaded) -> tuple[list[dict], dict]:
    """A slice's ``directions.pt``, checked against the model: a damaged or another model's is refused."""
    try:
        saved = torch.load(folder / "directions.pt", map_location="cpu", weights_only=True)
        directions = [{n: d[n].to(L.weights[n]).contiguous() for n in L.weights} for d in saved["directions"]]
        origin = {n: saved["origin"][n].to(L.weights[n]).contiguous() for n in L.weights}
        ok = all(v.shape == L.weights[n].shape for d in [*directions, origin] for n, v in d.items())
        ok = ok and len(directions) == L.spec.dims
    except Exception:  # noqa: BLE001 (unreadable, another layout, another model: all mean the same here)
        ok = False
    if not ok:
        raise UserError(
            f"slice {quote(str(folder))} has a damaged directions.pt, or another model's; pass --force "
            "to compute it again"
        )
    return directions, origin


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ the command


def run_on_ray(folder: Path, data_dir, device, workers: int, address: str | None) -> None:
    """One Ray task per shard (one CPU each), on the cluster at ``address`` (``auto``: the running one) or a
    private local instance. The shards append to files in ``folder``, so every node must see that path (one
    machine, or a shared filesystem); the merge reads them in grid order, as for local workers."""
    from landscape.launch import connect_ray

    ray = connect_ray(address, workers)
    task = ray.remote(run_shard).options(num_cpus=1, max_retries=0)
    ray.get([task.remote(str(folder), data_dir, device, k, workers, 1) for k in range(workers)])


def check_slice_name(name: str) -> None:
    if (
        not name
        or "/" in name
        or name.startswith(".")
        or not name.isprintable()
        or len(name.encode(errors="surrogateescape")) > 200
    ):
        raise UserError(f"--name {quote(name)} must be a plain, printable folder name of at most 200 bytes")


def slice_folder(run_dir: Path, name: str) -> Path:
    """``RUN/slices/NAME``, refused where a symbolic link would take the slice (or --force) outside the run."""
    for p in (run_dir / "slices", run_dir / "slices" / name):
        if p.is_symlink():
            raise UserError(f"{quote(str(p))} is a symbolic link; landscape writes slices only into the run itself")
        if p.exists() and not p.is_dir():
            raise UserError(f"{quote(str(p))} is a file, not a folder; pass another --name")
    return run_dir / "slices" / name


def clear(folder: Path) -> None:
    """``--force``: the slice's own files, and nothing else (a file of yours in the folder is refused first)."""
    foreign = [
        n
        for n in os.listdir(folder)
        if not (SLICE_FILES.match(n) or n == LOCK_NAME or is_temporary(n))
        or (folder / n).is_symlink()
        or (folder / n).is_dir()
    ]
    if foreign:
        raise UserError(
            f"--force removes only a slice's own files and {quote(str(folder))} holds "
            f"{quote(foreign[0])}; move it, or pass another --name"
        )
    for n in os.listdir(folder):
        if n != LOCK_NAME:
            (folder / n).unlink()


def slice_run(
    target: str | Path,
    spec: SliceSpec,
    name: str | None = None,
    data_dir=None,
    device: str | None = None,
    workers: int = 1,
    force: bool = False,
    log=print,
    launcher: str = "local",
    address: str | None = None,
    progress: bool = False,
) -> Path:
    """Compute (or finish) a slice of a run; returns its ``slice.json``. ``launcher``: ``local`` (``workers``
    processes on this machine) or ``ray`` (``workers`` Ray tasks, one shard each). Everything is checked before
    the slice's folder is touched."""
    spec.check()
    if not 1 <= workers <= 64:
        raise UserError(f"--workers must be between 1 and 64; got {workers}")
    if launcher not in ("local", "ray"):
        raise UserError(f"--launcher must be local or ray; got {quote(launcher)}")
    if address and launcher != "ray":
        raise UserError("--address needs --launcher ray")
    if launcher == "ray":
        from landscape.launch import _require_ray

        _require_ray()  # installed, before any file is written
    run_dir, ckpt_path = locate(target)
    name = name or spec.default_name()
    check_slice_name(name)
    folder = slice_folder(run_dir, name)
    for other in ([spec.to] if spec.to else []) + list(spec.trajectory):
        _checkpoint(locate(other)[1])  # the other points exist and are checkpoints, before any work
    if data_dir is None and (remembered := trained_from(run_dir)) is not None:
        data_dir = remembered
        log(
            f"slice {name}: data from {quote(data_dir)}, the folder the run was trained from (--data-dir picks another)"
        )
    t0 = time.perf_counter()
    L = load(run_dir, ckpt_path, spec, data_dir, device)  # every check before a file is written
    spec = L.spec
    fingerprint = sha256(ckpt_path)
    identity = json.loads(
        json.dumps(
            {
                "spec": asdict(spec),
                "run": str(run_dir.resolve()),
                "checkpoint": str(ckpt_path.resolve()),
                "checkpoint_sha256": fingerprint,
            }
        )
    )
    if (folder / "spec.json").exists() and not force:
        old = read_spec(folder)
        if old["spec"] != identity["spec"]:
            raise UserError(
                f"slice {quote(str(folder))} exists with other settings; pass --name for a new one or "
                "--force to replace it"
            )
        if old.get("checkpoint_sha256", fingerprint) != fingerprint:
            raise UserError(
                f"the checkpoint of slice {quote(str(folder))} changed since it began (the run trained on, "
                "or was replaced); pass --force to slice the new one, or --name for a new slice"
            )
    coords = S.grid_coords(spec.dims, spec.grid, spec.lo, spec.hi)
    if (folder / "slice.json").exists() and not force and len(done_points(folder, coords)) == len(coords):
        return folder / "slice.json"  # finished: the same command again changes nothing
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder, "slice"):
        resumed = (folder / "directions.pt").exists() and not force
        if resumed:
            read_directions(folder, L)
        else:
            if force:
                clear(folder)
            directions, meta = build_directions(spec, L)
            origin = origin_of(spec, L, meta)
            atomic_write(
                folder / "directions.pt",
                lambda p: torch.save(
                    {
                        "directions": [{k: v.cpu() for k, v in d.items()} for d in directions],
                        "origin": {k: v.cpu() for k, v in origin.items()},
                    },
                    p,
                ),
            )
            atomic_write(folder / "spec.json", json.dumps(json_safe({**identity, "about": meta}), indent=2))
        problems: list[str] = []
        before = len(done_points(folder, coords, problems))
        for problem in problems:
            log(f"slice {name}: {problem} (left out: the point is computed again)")
        if before < len(coords):
            log(
                f"slice {name}: {len(coords) - before} of {len(coords)} points to compute"
                f"{' (resumed)' if before else ''}, {workers} worker(s)"
            )
            with _points_bar(folder, coords, name, progress):
                compute(folder, data_dir, device, workers, launcher, address)
        points = done_points(folder, coords)
        missing = [i for i in range(len(coords)) if i not in points]
        if missing:
            raise UserError(
                f"slice {quote(str(folder))} is missing {len(missing)} points after its workers ended; run the "
                "same command again to finish it"
            )
        meta = read_spec(folder)
        centre = S.evaluate_slice(
            L.model,
            L.loss_fn,
            [{k: torch.zeros_like(v) for k, v in L.weights.items()}],
            [(0.0,)],
            L.batches,
            bn=spec.bn,
            origin=L.weights,
            buffers=L.buffers,
            prepare=L.prepare,
            bn_batches=[x for x, _ in L.batches[: spec.bn_batches]],
        )[0]
        axis = [coords[i][0] for i in range(0, len(coords), spec.grid if spec.dims == 2 else 1)]
        result = {
            **meta,
            "name": name,
            "axis": axis,
            "shape": [spec.grid] * spec.dims,
            "loss": [points[i]["loss"] for i in range(len(coords))],
            "acc": [points[i]["acc"] for i in range(len(coords))],
            "centre": {
                "loss": centre.loss,
                "acc": centre.acc,
                "coords": [1.0]
                if spec.directions == "interpolate" and meta.get("about", {}).get("from") == "initialisation"
                else [0.0] * spec.dims,
            },
            "seconds": time.perf_counter() - t0 if before == 0 else None,
        }
        return atomic_write(folder / "slice.json", json.dumps(json_safe(result), indent=2))


@contextlib.contextmanager
def _points_bar(folder: Path, coords: list, name: str, enabled: bool):
    """A progress bar of the slice's finished points (read from its shard files every second, whoever writes them:
    this process, its workers or Ray tasks)."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    stop = threading.Event()
    with Progress(TextColumn(f"slice {name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(name, total=len(coords), completed=len(done_points(folder, coords)))

        def poll():
            while not stop.wait(1.0):
                bar.update(task, completed=len(done_points(folder, coords)))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()
            bar.update(task, completed=len(done_points(folder, coords)))


def compute(folder: Path, data_dir, device, workers: int, launcher: str, address: str | None) -> None:
    """The slice's missing points: here, in ``workers`` processes, or as Ray tasks. Workers stop with this process
    (Ctrl-C ends the pool; a killed parent leaves workers that stop at their next point)."""
    if launcher == "ray":
        run_on_ray(folder, data_dir, device, workers, address)
    elif workers == 1:
        run_shard(str(folder), data_dir, device, 0, 1)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_worker_start)
        try:
            pool.map(
                _spawned, [(str(folder), data_dir, device, k, workers, threads, os.getpid()) for k in range(workers)]
            )
            pool.close()
        finally:
            pool.terminate()
            pool.join()


def read_slices(run_dir: Path) -> list[dict]:
    """A run's finished slices (``slices/*/slice.json``), unreadable ones skipped."""
    out = []
    for f in sorted((Path(run_dir) / "slices").glob("*/slice.json")):
        try:
            out.append(json.loads(read_text(f)))
        except (OSError, ValueError):
            continue
    return out
