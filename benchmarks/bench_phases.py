"""Where a training run's time goes: the main job's VGG runs broken down by phase.

    python benchmarks/bench_phases.py --data-dir data                 # the quick preset's standard and BN VGG, lr 0.1
    PYTHONPATH=../old-release python benchmarks/bench_phases.py ...   # the same for another release, to compare

Each run is trained from scratch (in a temporary folder) with the phases timed by wrapping the trainer's own
functions: data (drawing each batch), training steps (forward, backward, optimizer: the rest of the loop),
each probe by name (its records' own ``cost.seconds``) and the probes' bookkeeping (snapshots before the forward,
scheduling), evaluation, records (metrics, status) and checkpoints, and the setup before the first step (data
set, model). Only public names of the trainer are wrapped, so the same script times earlier releases; a phase
a release does not have is left out. Prints a Markdown table and, with ``--json``, writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch


class Clock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0  # nested phases count once, in the outermost

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        clock = self

        def timed(*args, **kwargs):
            if clock.depth:
                return original(*args, **kwargs)
            clock.depth += 1
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                clock.seconds[phase] += time.perf_counter() - t0
                clock.depth -= 1

        setattr(owner, name, timed)


def run_specs(preset: str, names: list[str]):
    from landscape.experiments import REGISTRY, get

    keys = tuple(e.preset_key for e in REGISTRY.values() if getattr(e, "preset_key", None))
    from landscape.planning import load_preset

    p = load_preset(preset, keys)
    specs = {s.name: s for s in get("smoothness").plan(p, [0], []) + get("train-compare").plan(p, [0], [])}
    return [specs[n] for n in names]


def time_run(spec, data_dir: str | None, splits) -> dict:
    import landscape.train as T
    from landscape.data import Batches
    from landscape.probes import Monitor

    try:
        from landscape.probes.rundir import RunDir as Records
    except ImportError:  # releases before the probe package had its own run directory
        Records = None
    from landscape.runs import Run

    clock = Clock()
    saved = []
    targets = [
        (Batches, "__call__", "data"),
        (T, "evaluate", "evaluation"),
        (Monitor, "before_forward", "probe bookkeeping"),
        (Monitor, "observe", "probes"),
        (Monitor, "after_step", "probes"),
        (Run, "save_checkpoint", "checkpoints"),
        (Run, "log", "records"),
        (Run, "set_status", "records"),
    ]
    if Records is not None:
        targets += [(Records, "log", "records"), (Records, "set_status", "records")]
    for owner, name, phase in targets:
        if name in vars(owner):
            saved.append((owner, name, vars(owner)[name]))
            clock.wrap(owner, name, phase)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            status = T.train(spec.cfg, out=Path(tmp), data_dir=data_dir, progress=False, splits=splits)
            total = time.perf_counter() - t0
            metrics = [json.loads(line) for line in (Path(tmp) / spec.name / "metrics.jsonl").read_text().splitlines()]
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    by_probe: dict[str, float] = defaultdict(float)
    for r in metrics:
        if r.get("kind") == "probe":
            by_probe[r["probe"]] += float((r.get("cost") or {}).get("seconds") or 0.0)
    loop = float(status.get("train_seconds") or total)
    phases = dict(clock.seconds)
    probes_total = phases.pop("probes", 0.0)
    out = {"setup": total - loop}
    out["data"] = phases.pop("data", 0.0)
    for name, s in sorted(by_probe.items()):
        out[f"probe: {name}"] = s
    out["probe bookkeeping"] = phases.pop("probe bookkeeping", 0.0) + max(0.0, probes_total - sum(by_probe.values()))
    out["evaluation"] = phases.pop("evaluation", 0.0)
    out["records"] = phases.pop("records", 0.0)
    out["checkpoints"] = phases.pop("checkpoints", 0.0)
    out["training steps"] = loop - sum(v for k, v in out.items() if k != "setup")
    out["total"] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--runs", nargs="+", default=["vgg-standard-lr0.1-s0", "vgg-bn-lr0.1-s0"])
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    ap.add_argument("--label", default="", help="a name for this release in the output")
    ap.add_argument(
        "--memory-format",
        choices=["auto", "channels_last", "contiguous"],
        default=None,
        help="the runs' memory_format (releases from 0.4 on; default: the release's own default)",
    )
    args = ap.parse_args()
    import landscape
    from landscape.data import load_data

    specs = run_specs(args.preset, args.runs)
    if args.memory_format is not None:
        import dataclasses

        specs = [
            dataclasses.replace(s, cfg=dataclasses.replace(s.cfg, memory_format=args.memory_format)) for s in specs
        ]
    t0 = time.perf_counter()
    splits = load_data(specs[0].cfg.data, args.data_dir)
    load = time.perf_counter() - t0
    results = {s.name: time_run(s, args.data_dir, splits) for s in specs}
    phases = list(dict.fromkeys(k for r in results.values() for k in r))
    label = args.label or getattr(landscape, "__version__", "?")
    print(
        f"landscape {label} ({Path(landscape.__file__).parent}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, memory_format {args.memory_format or 'as the release defaults'}; "
        f"data set loaded once in {load:.1f} s\n"
    )
    print("| phase | " + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for p in phases:
        cells = []
        for r in results.values():
            v = r.get(p)
            cells.append(
                "-" if v is None else f"{v:.1f} s ({100 * v / r['total']:.0f}%)" if p != "total" else f"{v:.1f} s"
            )
        print(f"| {p} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "load_s": load, "runs": results}, indent=2))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
