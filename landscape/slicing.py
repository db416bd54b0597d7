"""``landscape slice``: loss-landscape slices of a trained run, written beside it.

A slice of run ``R`` lives in ``R/slices/<name>/``: ``spec.json`` (everything that fixes it),
``directions.pt`` (the directions, so every worker and a resume use the same ones),
``points-<k>-of-<n>.jsonl`` (one line per finished point, appended as it is done) and, when
every point is done, ``slice.json`` (the grid in order, with the point's own loss and what the
directions are: Hessian eigenvalues, PCA variance explained and the trajectory's coordinates).
A killed slice resumes from the points already on disk; a grid split over workers gives
exactly the points of one process (each point depends only on the spec and directions).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from landscape.errors import UserError, quote
from landscape.files import atomic_write, read_text
from landscape.probes import slices as S
from landscape.probes.records import json_safe

MAX_POINTS = 40_000  # 200 x 200: beyond that a grid is a typo (a billion points is years of forwards)
MAX_SUBSET = 1_000_000


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
    subset: int = 1024  # examples the loss is measured on (a seeded subset of the split)
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
        if not 1 <= self.subset <= MAX_SUBSET:
            raise UserError(f"--subset must be between 1 and {MAX_SUBSET:,} examples; got {self.subset}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be positive; got {self.batch_size}")
        if self.bn_batches < 1:
            raise UserError(f"--bn-batches must be positive; got {self.bn_batches}")
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
    wrong = [n for n in like if n in model and tuple(model[n].shape) != tuple(like[n].shape)]
    if missing or wrong:
        what = f"has no '{missing[0]}'" if missing else f"has '{wrong[0]}' of shape {tuple(model[wrong[0]].shape)}"
        raise UserError(
            f"checkpoint {quote(str(path))} is of another model (it {what}); pass a checkpoint of this run's model"
        )
    return {n: model[n].to(like[n]) for n in like}


def load(run_dir: Path, ckpt_path: Path, spec: SliceSpec, data_dir, device: str | None) -> Loaded:
    from landscape.config import from_dict
    from landscape.data import load_data
    from landscape.losses import LOSSES
    from landscape.runs import Run
    from landscape.train import _setup, resolve_device

    ckpt = _checkpoint(ckpt_path)
    cfg = Run(run_dir).config()
    if cfg is None and isinstance(ckpt.get("config"), dict):
        try:
            cfg = from_dict(ckpt["config"])
        except (UserError, ValueError, TypeError):
            cfg = None
    if cfg is None:
        raise UserError(
            f"{quote(str(run_dir))} has no readable config.yaml (and the checkpoint no config); pass a run "
            "made by landscape train or an experiment"
        )
    dev = resolve_device(device or cfg.device)
    splits = load_data(cfg.data, data_dir)
    setup = _setup(cfg, dev, splits, None)  # the model at its initialisation, from the config's seed
    model = setup.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    like = {n: p.detach() for n, p in model.named_parameters() if n in names}
    weights = _weights_of(ckpt, like, ckpt_path)
    buffer_names = [n for n, _ in model.named_buffers()]
    buffers = {n: ckpt["model"][n].to(dev) for n in buffer_names if n in ckpt["model"]}
    split = setup.train_split if spec.split == "train" else setup.test_batches.split
    n = len(split)
    if spec.subset > n:
        raise UserError(f"--subset {spec.subset} is more than the {spec.split} split's {n} examples; pass at most {n}")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed))[: spec.subset].sort().values
    inputs, targets = (
        split.inputs[idx.to(split.inputs.device)].to(dev),
        split.targets[idx.to(split.targets.device)].to(dev),
    )
    batches = [
        (inputs[i : i + spec.batch_size], targets[i : i + spec.batch_size])
        for i in range(0, spec.subset, spec.batch_size)
    ]
    return Loaded(model, LOSSES[cfg.loss], weights, buffers, batches, setup.test_batches.prepare, setup, cfg)


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
    plane = S.pca_plane([*trajectory, L.weights], spec.ignore)
    return list(plane.directions[: spec.dims]), {"explained": list(plane.explained), "trajectory": plane.coords}


def origin_of(spec: SliceSpec, L: Loaded, meta: dict) -> dict:
    if spec.directions == "interpolate" and meta.get("from") == "initialisation":
        return {n: p.detach().clone() for n, p in L.model.named_parameters() if n in L.weights}
    return L.weights


# ------------------------------------------------------------------ shards


def shard_file(folder: Path, k: int, n: int) -> Path:
    return folder / f"points-{k}-of-{n}.jsonl"


def done_points(folder: Path) -> dict[int, dict]:
    """Every point on disk, from any shard file (a torn last line, from a kill, is ignored)."""
    out = {}
    for f in sorted(folder.glob("points-*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[int(rec["i"])] = rec
            except (ValueError, KeyError, TypeError):
                continue
    return out


def run_shard(folder: str, data_dir, device, k: int, n: int, threads: int | None = None) -> int:
    """Compute shard ``k`` of ``n`` of the slice in ``folder``; returns the points it computed."""
    if threads:
        torch.set_num_threads(threads)
    folder = Path(folder)
    meta = json.loads(read_text(folder / "spec.json"))
    spec = SliceSpec(**{**meta["spec"], "trajectory": tuple(meta["spec"]["trajectory"])})
    L = load(Path(meta["run"]), Path(meta["checkpoint"]), spec, data_dir, device)
    dirs = torch.load(
        folder / "directions.pt", map_location=L.setup.model.parameters().__next__().device, weights_only=True
    )
    directions = [{k2: v.to(L.weights[k2]) for k2, v in d.items()} for d in dirs["directions"]]
    origin = {k2: v.to(L.weights[k2]) for k2, v in dirs["origin"].items()}
    coords = S.grid_coords(spec.dims, spec.grid, spec.lo, spec.hi)
    done = done_points(folder)
    todo = [i for i in S.shard(len(coords), k, n) if i not in done]
    bn_batches = [x for x, _ in L.batches[: spec.bn_batches]] if spec.bn == "recompute" else None
    with open(shard_file(folder, k, n), "a") as f:

        def write(i, v):
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


def _spawned(args):  # a worker process's entry
    return run_shard(*args)


# ------------------------------------------------------------------ the command


def run_on_ray(folder: Path, data_dir, device, workers: int, address: str | None) -> None:
    """One Ray task per shard (one CPU each), on the cluster at ``address`` (``auto``: the running one) or a
    private local instance. The shards append to files in ``folder``, so every node must see that path (one
    machine, or a shared filesystem); the merge reads them in grid order, as for local workers."""
    from landscape.launch import _require_ray

    ray = _require_ray()
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
        except ConnectionError:
            raise UserError(
                f"no Ray cluster at --address {quote(address)}; start one with `ray start --head` "
                "or leave --address out for a local instance"
            ) from None
    task = ray.remote(run_shard).options(num_cpus=1, max_retries=0)
    ray.get([task.remote(str(folder), data_dir, device, k, workers, 1) for k in range(workers)])


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
) -> Path:
    """Compute (or finish) a slice of a run; returns its ``slice.json``. ``launcher``: ``local`` (``workers``
    processes on this machine) or ``ray`` (``workers`` Ray tasks, one shard each)."""
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
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"--name {quote(name)} must be a plain folder name")
    folder = run_dir / "slices" / name
    identity = json.loads(json.dumps({"spec": asdict(spec), "run": str(run_dir), "checkpoint": str(ckpt_path)}))
    if (folder / "spec.json").exists() and not force:
        try:
            old = json.loads(read_text(folder / "spec.json"))
        except ValueError:
            old = None
        if not old or {k: old.get(k) for k in ("spec", "checkpoint")} != {
            k: identity[k] for k in ("spec", "checkpoint")
        }:
            raise UserError(
                f"slice {quote(str(folder))} exists with other settings; pass --name for a new one or "
                "--force to replace it"
            )
    for other in ([spec.to] if spec.to else []) + list(spec.trajectory):
        _checkpoint(locate(other)[1])  # the other points exist and are checkpoints, before any work
    t0 = time.perf_counter()
    L = load(run_dir, ckpt_path, spec, data_dir, device)  # every check before a file is written
    resumed = (folder / "directions.pt").exists() and not force
    if not resumed:
        directions, meta = build_directions(spec, L)
        origin = origin_of(spec, L, meta)
        if force and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
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
    coords = S.grid_coords(spec.dims, spec.grid, spec.lo, spec.hi)
    before = len(done_points(folder))
    if before < len(coords):
        log(
            f"slice {name}: {len(coords) - before} of {len(coords)} points to compute"
            f"{' (resumed)' if before else ''}, {workers} worker(s)"
        )
        if launcher == "ray":
            run_on_ray(folder, data_dir, device, workers, address)
        elif workers == 1:
            run_shard(str(folder), data_dir, device, 0, 1)
        else:
            threads = max(1, torch.get_num_threads() // workers)
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers) as pool:
                pool.map(_spawned, [(str(folder), data_dir, device, k, workers, threads) for k in range(workers)])
    points = done_points(folder)
    missing = [i for i in range(len(coords)) if i not in points]
    if missing:
        raise UserError(
            f"slice {quote(str(folder))} is missing {len(missing)} points after its workers ended; run the "
            "same command again to finish it"
        )
    meta = json.loads(read_text(folder / "spec.json"))
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
            if spec.directions == "interpolate" and meta["about"].get("from") == "initialisation"
            else [0.0] * spec.dims,
        },
        "seconds": time.perf_counter() - t0 if before == 0 else None,
    }
    return atomic_write(folder / "slice.json", json.dumps(json_safe(result), indent=2))


def read_slices(run_dir: Path) -> list[dict]:
    """A run's finished slices (``slices/*/slice.json``), unreadable ones skipped."""
    out = []
    for f in sorted((Path(run_dir) / "slices").glob("*/slice.json")):
        try:
            out.append(json.loads(read_text(f)))
        except (OSError, ValueError):
            continue
    return out
