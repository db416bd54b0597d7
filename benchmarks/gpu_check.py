"""The GPU check: one prepared command that proves the CUDA path and times it, for the minutes a GPU is lent.

    mkdir -p /tmp/cifar10 && tar xJf cifar10-jpeg.tar.xz -C /tmp/cifar10
    python benchmarks/gpu_check.py --data-dir /tmp/cifar10 --out OUT
    python benchmarks/gpu_check.py --dry-run --out OUT      # anywhere, on the CPU, at tiny size (a test runs it)

Five sections, each within its own share of the time (about 8 minutes in all on one H100); a section that fails
records its error and the others still run:

1. probes on the device: a small BN network trained 4 steps with every built-in probe enabled, once on the
   device and once on the CPU from the same weights; each probe's largest and median relative difference over
   its first record's numbers (float32 on both: agreement to ~1e-3 is expected of deterministic probes; the
   trace's and density's random vectors come from each device's own generator, so they agree only in law).
2. the paper preset: one run of each kind the paper's experiments train (VGG-11 standard / BN / noisy BN /
   l_p norms, the DLN), for ``--steps`` steps with the probes of its full schedule that fall in them, phases
   timed as ``bench_phases.py`` times them; from the per-step and per-probe-call costs, the projected wall time
   of each run and of ``landscape reproduce --preset paper`` (which trains every shared run once).
3. timings against baselines measured in the same process: the trainer against a bare PyTorch loop, one HVP
   against one gradient, sharpness against PyHessian (when installed), a slice point against a forward pass,
   probes under bf16 autocast against float32.
4. host synchronisation: the training loop's synchronising CUDA calls per step, counted by
   ``torch.cuda.set_sync_debug_mode`` over a probe-free run (the goal: none per step; logging every
   ``train_every`` steps reads the loss once).
5. OUT/gpu_check.json (every number) and OUT/gpu_check.md (the tables docs/scale.md prints).

Nothing here asserts a time; the goals (trainer >= 0.95 of a bare loop, no per-step sync, the paper preset in
at most 15 minutes on one H100) are printed beside what was measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_phases import time_run  # noqa: E402
from bench_train import bare_loop, trainer  # noqa: E402
from common import timeit  # noqa: E402

from landscape.config import ModelConfig, VggConfig, build_config  # noqa: E402
from landscape.data import Batches, load_data, synthetic_images  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.train import resolve_device, train  # noqa: E402

CE = torch.nn.functional.cross_entropy
# every built-in probe the trainer runs, with options small enough for a 4-step run
PROBES = {
    "gradient_sweep": {},
    "ics_opti": {},
    "activation_stats": {"batch": 32},
    "layer_grad_norm": {},
    "sharpness": {"iters": 10},
    "preconditioned_sharpness": {"iters": 10},
    "curvature": {},
    "layer_sharpness": {"iters": 5},
    "hessian_trace": {"samples": 4},
    "spectral_density": {"vectors": 2, "steps": 4},
    "loss_slice": {"points": 5},
    "update_sweep": {},
    "batch_sharpness": {"batches": 2, "batch_size": 16},
    "edge_eigenvalues": {"max_products": 12, "min_products": 12, "batch": 16},
    "bn_gradient": {},
    "bn_curvature": {},
    "activation_hessian": {"layers": ["type:Conv2d"], "iters": 5},
    "effective_lr": {},
}
STOCHASTIC = {"hessian_trace", "spectral_density"}  # random vectors from each device's own generator


def section(report: dict, name: str, fn, *args) -> None:
    """Run one section; its result or its error goes in the report, and the check goes on."""
    t0 = time.perf_counter()
    print(f"[{name}] ...", flush=True)
    try:
        report[name] = {"result": fn(*args), "seconds": round(time.perf_counter() - t0, 2)}
    except Exception as exc:  # noqa: BLE001 (a failing section is a finding, not the end of the check)
        report[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=6)}
    error = report[name].get("error")
    print(f"[{name}] {time.perf_counter() - t0:.1f} s" + (f" ERROR {error}" if error else ""))


def numbers(values, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a record's values, flattened to ``path -> value``."""
    out = {}
    if isinstance(values, dict):
        for k, v in values.items():
            out.update(numbers(v, f"{prefix}{k}."))
    elif isinstance(values, list):
        for i, v in enumerate(values):
            out.update(numbers(v, f"{prefix}{i}."))
    elif isinstance(values, (int, float)) and not isinstance(values, bool) and math.isfinite(values):
        out[prefix.rstrip(".")] = float(values)
    return out


def probe_config(device: str, name: str, tiny: bool):
    return build_config(
        [
            {
                "name": name,
                "steps": 1 if tiny else 4,
                "seed": 0,
                "device": device,
                "model": {"norm": "batch", "vgg": {"width": 0.0625}},
                "data": {"dataset": "synthetic", "synthetic_size": 256, "batch_size": 32},
                "log": {"train_every": 1, "eval_every": 0, "checkpoint_every": 1 if tiny else 4},
                "probes": {
                    "enabled": list(PROBES),
                    "every": 2,
                    **PROBES,
                    **({"layer_sharpness": {"iters": 2}} if tiny else {}),
                },
            }
        ]
    )


def probes_on_device(device: torch.device, tiny: bool) -> dict:
    """Every probe on ``device`` and on the CPU from the same seed: per probe, how far their first records differ
    (on the CPU alone, a dry run: one run, each probe's cost only)."""
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, dev in (("on-device", str(device)), ("on-cpu", "cpu"))[: 1 if device.type == "cpu" else 2]:
            cfg = probe_config(dev, name, tiny)
            status = train(cfg, out=tmp)
            if status["status"] != "done":
                raise RuntimeError(f"the probe run on {dev} ended {status['status']}")
            lines = (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()
            records.append([json.loads(x) for x in lines])
    out = {}
    for probe in PROBES:
        firsts = [next((r for r in recs if r.get("probe") == probe), None) for recs in records]
        if any(r is None for r in firsts):
            out[probe] = {"ran": False}
            continue
        a, b = numbers(firsts[0]["values"]), numbers(firsts[-1]["values"])
        diffs = [abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]), 1e-6) for k in a.keys() & b.keys()]
        seconds = (firsts[0].get("cost") or {}).get("seconds")
        compared = len(firsts) == 2
        out[probe] = {
            "ran": True,
            "numbers": len(a),
            "max_rel_diff": max(diffs, default=0.0) if compared else None,
            "median_rel_diff": statistics.median(diffs) if diffs and compared else None,
            "stochastic": probe in STOCHASTIC,
            "seconds": seconds,
        }
    return out


def paper_kinds(preset_name: str) -> dict[str, list]:
    """The paper experiments' shared runs (as reproduce trains them), grouped by kind: {kind: [RunSpec]}."""
    from landscape.experiments import REGISTRY
    from landscape.planning import load_preset
    from landscape.reproduce import plan

    keys = tuple(e.preset_key for e in REGISTRY.values() if getattr(e, "preset_key", None))
    preset = load_preset(preset_name, keys)
    seeds = list(range(int(preset.get("seeds", 1))))
    specs = {}
    for e in REGISTRY.values():
        if e.paper:
            for s in plan(e, preset, seeds, []):
                specs[s.name] = s
    kinds: dict[str, list] = {}
    # the most probed run of a kind first: it is the one timed (a run carries only the probes an experiment reads)
    for s in sorted(specs.values(), key=lambda s: -len(s.cfg.probes.enabled)):
        kinds.setdefault(f"{s.cfg.model.arch}-{s.cfg.model.norm}", []).append(s)
    return kinds


def scheduled(cfg, total: int) -> list[int]:
    from landscape.probes import schedules

    p = cfg.probes
    schedule = schedules.build(p.schedule, total, p.every, p.points, p.steps)
    return [s for s in range(1, total + 1) if schedule(s)]


def evals(cfg, total: int) -> int:
    e = cfg.log.eval_every
    return (total // e if e else 0) + 1  # every eval_every steps and at the end


def sliced(spec, steps: int, device: torch.device):
    """The run cut to its first ``steps`` steps, probed at exactly the steps its full schedule probes there."""
    import dataclasses

    cfg = spec.cfg
    full = scheduled(cfg, cfg.steps)
    probes = dataclasses.replace(cfg.probes, schedule="list", steps=[s for s in full if s <= steps] or [1])
    log = dataclasses.replace(cfg.log, checkpoint_every=steps)
    return dataclasses.replace(
        spec, cfg=dataclasses.replace(cfg, steps=steps, device=str(device), probes=probes, log=log)
    )


def paper_preset(device: torch.device, data_dir: str | None, steps: int, preset_name: str) -> dict:
    """One run of each kind for ``steps`` steps; per-step and per-call costs; the full runs and reproduce projected."""
    kinds = paper_kinds(preset_name)
    out = {"kinds": {}, "projected_seconds": 0.0}
    splits_cache = {}
    for kind, specs in kinds.items():
        spec = sliced(specs[0], min(steps, specs[0].cfg.steps), device)
        d = spec.cfg.data
        key = (d.dataset, d.image_size, d.gaussian_samples, d.gaussian_dim, d.gaussian_seed, d.synthetic_size)
        if key not in splits_cache:
            splits_cache[key] = load_data(d, data_dir)
        phases = time_run(spec, data_dir, splits_cache[key])
        n = spec.cfg.steps
        events = len(spec.cfg.probes.steps)
        per_step = phases["training steps"] / n + phases.get("data", 0.0) / n
        per_event = sum(v for k, v in phases.items() if k.startswith("probe")) / max(events, 1)
        per_eval = phases.get("evaluation", 0.0) / max(evals(spec.cfg, n), 1)
        full = []
        for s in specs:
            total = s.cfg.steps
            # a run without probes has no probe events; one with fewer than the timed run's is over-counted
            probed = len(scheduled(s.cfg, total)) if s.cfg.probes.enabled else 0
            full.append(
                phases["setup"]
                + total * per_step
                + probed * per_event
                + evals(s.cfg, total) * per_eval
                + phases.get("records", 0.0) * total / n
                + phases.get("checkpoints", 0.0)
            )
        out["kinds"][kind] = {
            "runs": len(specs),
            "steps_timed": n,
            "full_steps": specs[0].cfg.steps,
            "probe_events_timed": events,
            "probe_events_full": len(scheduled(specs[0].cfg, specs[0].cfg.steps)),
            "phases": phases,
            "seconds_per_step": per_step,
            "seconds_per_probe_event": per_event,
            "projected_seconds_per_run": statistics.mean(full),
            "projected_seconds": sum(full),
        }
        out["projected_seconds"] += sum(full)
    out["goal_seconds"] = 15 * 60
    return out


def timings(device: torch.device, data_dir: str | None, tiny: bool) -> dict:
    """Each against its baseline in this process: trainer/bare loop, HVP/gradient, sharpness/PyHessian,
    slice point/forward pass, bf16 autocast probes/float32."""
    from landscape.probes import evaluation, gradient_sweep, sharpness
    from landscape.probes import slices as S
    from landscape.probes.functional import Objective, current_params

    width, bs, steps, warmup, repeats = (0.0625, 16, 4, 2, 1) if tiny else (1.0, 128, 220, 20, 3)
    splits = (
        {"train": synthetic_images(512, 0), "test": synthetic_images(64, 1)}
        if tiny or not data_dir
        else load_data(build_config([{}]).data, data_dir)
    )
    out = {}
    cfg = build_config(
        [
            {
                "name": "bench",
                "steps": steps,
                "device": str(device),
                "model": {"norm": "batch", "vgg": {"width": width}},
                "data": {"batch_size": bs},
                "log": {"train_every": warmup, "eval_every": 0, "checkpoint_every": steps},
            }
        ]
    )
    ratios = []
    for _ in range(repeats):
        bare = bare_loop(cfg, splits["train"], device, steps, warmup)
        ours = trainer(cfg, splits, steps, warmup)
        ratios.append(ours / bare)
    out["trainer_over_bare_loop"] = {"median": statistics.median(ratios), "each": ratios, "goal": 0.95}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        def run():
            fn()
            sync()

        return timeit(run, max(repeats, 2))

    model = build_model(ModelConfig(norm="batch", vgg=VggConfig(width=width)), seed=0).to(device)
    x, y = Batches(splits["train"], bs, seed=0, device=device)(0)
    batch = (x, y)
    f = Objective.of(model, CE, batch)
    w = current_params(model)
    v = {n: torch.randn_like(t) for n, t in w.items()}
    _, _, hvp = f.hessian_operator(w)
    t_grad, t_hvp = timed(lambda: f.value_and_grad(w)), timed(lambda: hvp(v))
    out["hvp_over_gradient"] = {"gradient_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp, "ratio": t_hvp / t_grad}

    t_ours = timed(lambda: sharpness(model, CE, batch, iters=20, tol=1e-2))
    out["sharpness"] = {"landscape_tol_1e-2_s": t_ours}
    try:
        from pyhessian import hessian

        def theirs():
            torch.manual_seed(0)
            hessian(model, CE, data=batch, cuda=device.type == "cuda").eigenvalues(maxIter=100, tol=1e-3)

        t_theirs = timed(theirs)
        out["sharpness"].update({"pyhessian_defaults_s": t_theirs, "pyhessian_over_landscape": t_theirs / t_ours})
    except ImportError:
        out["sharpness"]["pyhessian"] = "not installed (pip install -e .[bench])"

    model.eval()
    with torch.no_grad():
        t_forward = timed(lambda: CE(model(x), y))
    d = S.random_direction(w, 0)
    t_point = timed(lambda: S.evaluate_slice(model, CE, [d], [(0.5,)], [batch], bn="checkpoint", origin=w))
    out["slice_point_over_forward"] = {"forward_ms": 1e3 * t_forward, "point_ms": 1e3 * t_point}
    out["slice_point_over_forward"]["ratio"] = t_point / t_forward
    model.train()

    etas = [0.05 * (i + 1) for i in range(8)]
    t32 = timed(lambda: gradient_sweep(model, CE, batch, etas))
    cast = {"device_type": device.type, "dtype": torch.bfloat16}
    with evaluation(autocast=cast):
        t16 = timed(lambda: gradient_sweep(model, CE, batch, etas))
        beta16 = gradient_sweep(model, CE, batch, etas).beta_eff
    beta32 = gradient_sweep(model, CE, batch, etas).beta_eff
    out["bf16_over_float32_gradient_sweep"] = {
        "float32_ms": 1e3 * t32,
        "bf16_ms": 1e3 * t16,
        "ratio": t16 / t32,
        "beta_eff_rel_diff": abs(beta16 - beta32) / max(abs(beta32), 1e-12),
    }
    return out


def host_syncs(device: torch.device, tiny: bool) -> dict:
    """Synchronising CUDA calls per training step in a probe-free run (logging every ``train_every`` steps)."""
    if device.type != "cuda":
        return {"applies": False, "why": f"sync debug mode counts CUDA synchronisations; the device is {device}"}
    steps, every = (20, 10) if tiny else (200, 100)
    cfg = build_config(
        [
            {
                "name": "sync",
                "steps": steps,
                "device": str(device),
                "model": {"norm": "batch", "vgg": {"width": 0.25}},
                "data": {"dataset": "synthetic", "synthetic_size": 4096},
                "log": {"train_every": every, "eval_every": 0, "checkpoint_every": steps},
            }
        ]
    )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(cfg, out=tmp)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})
    return {"applies": True, "steps": steps, "syncs": len(syncs), "per_step": len(syncs) / steps, "where": where}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"GPU check on {env['device_name']} ({env['device']}), torch {env['torch']}, {env['when']}", ""]
    probes = report.get("probes on the device", {})
    if "result" in probes:
        lines += ["| probe | numbers | max rel. diff (device vs CPU) | median | seconds |", "|---|---:|---:|---:|---:|"]
        for name, r in probes["result"].items():
            if not r["ran"]:
                lines.append(f"| {name} | not recorded | | | |")
                continue
            star = " (random vectors)" if r["stochastic"] else ""
            s, hi, mid = r["seconds"], r["max_rel_diff"], r["median_rel_diff"]
            lines.append(
                f"| {name}{star} | {r['numbers']} | {'-' if hi is None else f'{hi:.1e}'} | "
                f"{'-' if mid is None else f'{mid:.1e}'} | {'-' if s is None else f'{s:.3f}'} |"
            )
        lines.append("")
    paper = report.get("paper preset", {})
    if "result" in paper:
        p = paper["result"]
        lines += [
            "| kind | runs | steps timed / full | s per step | s per probe event | projected s per run |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind, k in p["kinds"].items():
            lines.append(
                f"| {kind} | {k['runs']} | {k['steps_timed']} / {k['full_steps']} | {k['seconds_per_step']:.4f} | "
                f"{k['seconds_per_probe_event']:.2f} | {k['projected_seconds_per_run']:.0f} |"
            )
        lines += ["", f"Projected reproduce wall time: {p['projected_seconds'] / 60:.1f} min (goal 15 min)", ""]
    t = report.get("timings", {})
    if "result" in t:
        r = t["result"]
        lines += ["| measured | value |", "|---|---:|"]
        lines.append(f"| trainer / bare loop throughput (goal >= 0.95) | {r['trainer_over_bare_loop']['median']:.3f} |")
        lines.append(f"| one HVP / one gradient | {r['hvp_over_gradient']['ratio']:.2f} |")
        sh = r["sharpness"]
        if "pyhessian_over_landscape" in sh:
            lines.append(
                f"| PyHessian defaults / landscape sharpness (tol 1e-2) | {sh['pyhessian_over_landscape']:.2f} |"
            )
        lines.append(f"| a slice point / a forward pass | {r['slice_point_over_forward']['ratio']:.2f} |")
        bf = r["bf16_over_float32_gradient_sweep"]
        lines.append(f"| gradient_sweep under bf16 autocast / float32 | {bf['ratio']:.2f} |")
        lines.append(f"| beta_eff under bf16 vs float32 (rel. diff) | {bf['beta_eff_rel_diff']:.1e} |")
        lines.append("")
    s = report.get("host syncs", {})
    if "result" in s:
        r = s["result"]
        lines.append(
            f"Host synchronisations per training step: {r['per_step']:.2f} ({r['syncs']} in {r['steps']} steps; "
            f"at {', '.join(r['where']) or 'none'})"
            if r["applies"]
            else f"Host synchronisations: not measured ({r['why']})"
        )
    errors = [f"- {name}: {v['error']}" for name, v in report.items() if isinstance(v, dict) and "error" in v]
    if errors:
        lines += ["", "Sections that failed:", *errors]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 (else generated images)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=300, help="steps of each paper run timed")
    ap.add_argument("--dry-run", action="store_true", help="the CPU at tiny size: the smoke preset, a few steps")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        sys.exit(f"error: --out {out} is a file; pass a folder")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu") if args.dry_run else resolve_device(args.device)
    tiny = args.dry_run
    report: dict = {
        "environment": {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "dry_run": tiny,
        }
    }
    t0 = time.perf_counter()
    section(report, "probes on the device", probes_on_device, device, tiny)
    section(
        report,
        "paper preset",
        paper_preset,
        device,
        args.data_dir,
        3 if tiny else args.steps,
        "smoke" if tiny else "paper",
    )
    section(report, "timings", timings, device, args.data_dir, tiny)
    section(report, "host syncs", host_syncs, device, tiny)
    report["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"{report['seconds']:.0f} s in all -> {out}")
    sys.exit(1 if any(isinstance(v, dict) and "error" in v for v in report.values()) else 0)


if __name__ == "__main__":
    main()
