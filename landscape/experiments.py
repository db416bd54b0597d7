"""The paper's experiments as sets of runs, and the claims each one checks.

An experiment is a list of runs (a network, an lr, a seed) built from a preset file
``configs/presets/<preset>.yaml``. Runs live in ``OUT/runs/<name>`` and are shared: the
standard and BN VGG at lr 0.1 serve Figures 1-4 alike, so ``reproduce`` trains each once.
Runs compared within an experiment are paired: the same ``seed``, ``data_seed`` and
``noise_seed``, hence the same initial draw, batch order and probe batch.
A finished run is skipped, an interrupted one resumed, and a run that fails is recorded as
failed without stopping the others. Each experiment then writes ``OUT/<experiment>/summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from landscape.config import Config, build_config, read_yaml
from landscape.errors import UserError
from landscape.results import (RunRecords, beta_eff, final_test, final_train, loss_band, max_grad_change,
                               mean_over_layers, mean_shift, med, probe_series, read_run)
from landscape.runs import FINISHED, Run, json_safe
from landscape.stats import mean_ci, verdict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("smoke", "quick", "paper")
VGG_NORMS = {"standard": "none", "bn": "batch", "noisy_bn": "noisy_batch", "l1": "l1", "l2": "l2", "linf": "linf"}
DLN_NORMS = {"standard": "none", "bn": "batch"}
PRESET_KEYS = ("lrs", "vgg", "dln")


def _say(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class RunSpec:
    name: str
    arch: str  # vgg | dln
    net: str  # standard | bn | noisy_bn | l1 | l2 | linf
    lr: float
    seed: int
    cfg: Config


def load_preset(name: str) -> dict:
    path = CONFIGS / "presets" / f"{name}.yaml"
    if not (CONFIGS / "presets").is_dir():
        raise UserError(f"preset files not found in '{CONFIGS / 'presets'}'; install landscape from a clone of the "
                        "repository with `pip install -e .` so configs/ sits beside the package")
    if name not in PRESETS or not path.is_file():
        raise UserError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    preset = read_yaml(path)
    unknown = [k for k in preset if k not in PRESET_KEYS]
    if unknown:
        raise UserError(f"preset file '{path}' has unknown key '{unknown[0]}'; valid keys: {', '.join(PRESET_KEYS)}")
    preset.setdefault("lrs", [0.1, 0.5])
    preset["name"] = name
    return preset


def vgg_run(preset: dict, net: str, lr: float, seed: int, overrides: list[dict]) -> RunSpec:
    name = f"vgg-{net}-lr{lr:g}-s{seed}"
    cfg = build_config([preset.get("vgg", {}),
                        {"name": name, "seed": seed, "data_seed": seed, "noise_seed": seed,
                         "model": {"arch": "vgg", "norm": VGG_NORMS[net]}, "optim": {"lr": lr}}, *overrides])
    return RunSpec(cfg.name, "vgg", net, lr, seed, cfg)


def dln_run(preset: dict, net: str, seed: int, overrides: list[dict]) -> RunSpec:
    base = read_yaml(CONFIGS / "dln.yaml")
    cfg = build_config([base, preset.get("dln", {}),
                        {"seed": seed, "data_seed": seed, "noise_seed": seed, "model": {"norm": DLN_NORMS[net]}},
                        *overrides])
    name = f"dln-{net}-lr{cfg.optim.lr:g}-s{seed}"
    cfg = build_config([{"name": name}], base=cfg)
    return RunSpec(name, "dln", net, cfg.optim.lr, seed, cfg)


def _vgg(preset, nets, lrs, seeds, overrides):
    return [vgg_run(preset, net, lr, s, overrides) for lr in lrs for net in nets for s in seeds]


def _dln(preset, nets, seeds, overrides):
    return [dln_run(preset, net, s, overrides) for net in nets for s in seeds]


def plan(experiment: str, preset: dict, seeds: list[int], overrides: list[dict] = ()) -> list[RunSpec]:
    """The documented set of runs of one experiment."""
    lr0 = preset["lrs"][0]
    if experiment == "train-compare":
        return _vgg(preset, ("standard", "bn"), preset["lrs"], seeds, overrides)
    if experiment == "ics-distrib":
        return _vgg(preset, ("standard", "bn", "noisy_bn"), [lr0], seeds, overrides)
    if experiment in ("ics-opti", "smoothness"):
        return (_vgg(preset, ("standard", "bn"), [lr0], seeds, overrides)
                + _dln(preset, ("standard", "bn"), seeds, overrides))
    if experiment == "norms":
        return _vgg(preset, ("standard", "bn", "l1", "l2", "linf"), [lr0], seeds, overrides)
    raise UserError(f"unknown experiment '{experiment}'; choose one of {', '.join(EXPERIMENTS)}")


# ------------------------------------------------------------------ executing runs


@dataclass
class Launch:
    """Where runs execute: ``local`` (in this process, one after another) or ``ray`` (one Ray
    task per run; ``address`` "auto" joins a running cluster, None starts a local instance)."""

    launcher: str = "local"
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    progress: bool = False


def pending(specs: list[RunSpec], out: Path, device: str | None, log: Callable[[str], None]
            ) -> tuple[list[Config], dict[str, str]]:
    """Configs still to train, and the status of the runs already finished (skipped).

    A run directory made with another config is refused before any work starts."""
    todo, finished = [], {}
    unique = {s.name: s for s in specs}
    for i, spec in enumerate(unique.values(), 1):
        cfg = spec.cfg if device is None else build_config([{"device": device}], base=spec.cfg)
        if (out / spec.name).exists():
            Run.open(out / spec.name, cfg, resume=True)
            run = read_run(out / spec.name)
            if run.state in FINISHED:
                finished[spec.name] = run.state
                log(f"[{i}/{len(unique)}] {spec.name}: {run.describe_status()} (already complete, skipped)")
                continue
        todo.append(cfg)
    return todo, finished


def execute(specs: list[RunSpec], out: Path, data_dir, device: str | None, launch: Launch | None = None,
            log: Callable[[str], None] = _say) -> dict[str, str]:
    """Train every spec that is not finished (resuming interrupted ones); returns name -> status.

    A run that raises is recorded as failed and the others go on; bad input (a UserError)
    still stops everything, before any run starts where it can be checked up front."""
    launch = launch or Launch()
    out = Path(out) / "runs"
    todo, statuses = pending(specs, out, device, log)
    if launch.launcher == "ray":
        from landscape.launchers import run_on_ray

        statuses.update(run_on_ray(todo, out, data_dir, launch, log))
    elif launch.launcher == "local":
        statuses.update(run_locally(todo, out, data_dir, launch.progress, log))
    else:
        raise UserError(f"unknown launcher '{launch.launcher}'; use local or ray")
    return statuses


def run_locally(todo: list[Config], out: Path, data_dir, progress: bool, log: Callable[[str], None]) -> dict[str, str]:
    """One run after another in this process; data sets are loaded once and shared."""
    from landscape.data import load_splits
    from landscape.train import train

    cache: dict[tuple, dict] = {}
    statuses = {}
    for i, cfg in enumerate(todo, 1):
        d = cfg.data
        key = (d.dataset, d.synthetic_size, d.gaussian_samples, d.gaussian_dim, d.gaussian_seed)
        if key not in cache:
            cache[key] = load_splits(d.dataset, data_dir, d.synthetic_size, d.gaussian_samples, d.gaussian_dim,
                                     d.gaussian_seed)
        t0 = time.perf_counter()
        try:
            statuses[cfg.name] = train(cfg, out=out, data_dir=data_dir, resume=True, progress=progress,
                                       splits=cache[key])["status"]
        except UserError:
            raise
        except Exception as exc:  # recorded in the run's status.json by the trainer
            statuses[cfg.name] = "failed"
            log(f"[{i}/{len(todo)} to train] {cfg.name}: failed ({type(exc).__name__}: {exc})")
            continue
        log(f"[{i}/{len(todo)} to train] {cfg.name}: {read_run(out / cfg.name).describe_status()} "
            f"in {time.perf_counter() - t0:.0f} s")
    return statuses


# ------------------------------------------------------------------ claims


def _per_seed(runs: dict[str, RunRecords], specs: list[RunSpec], arch: str, net: str, lr: float | None,
              metric: Callable[[RunRecords], float | None]) -> dict[int, float | None]:
    out = {}
    for s in specs:
        if s.arch == arch and s.net == net and (lr is None or s.lr == lr) and s.name in runs:
            out[s.seed] = metric(runs[s.name])
    return out


def _ratio(a: dict, b: dict) -> list[float | None]:
    """Per seed a/b (paired), skipping seeds where either is missing."""
    return [a[s] / b[s] if a.get(s) is not None and b.get(s) not in (None, 0) else None for s in sorted(a)]


def _diff(a: dict, b: dict) -> list[float | None]:
    return [a[s] - b[s] if a.get(s) is not None and b.get(s) is not None else None for s in sorted(a)]


def _claim(cid: str, text: str, quantity: str, values: list, threshold: float, above: bool = True,
           extra: dict | None = None) -> dict:
    agg = mean_ci(values)
    return {"id": cid, "claim": text, "quantity": quantity, **agg, "threshold": threshold,
            "direction": "above" if above else "below", "verdict": verdict(agg, threshold, above), **(extra or {})}


def _train_loss(run: RunRecords) -> float | None:
    """Final train loss; a diverged run counts as infinitely bad (it is compared, not dropped)."""
    if run.state == "diverged":
        return float("inf")
    return final_train(run)["loss"]


def _test_acc(run: RunRecords) -> float | None:
    if run.state == "diverged":
        return 0.0
    return final_test(run)["acc"]


def _median_probe(probe: str, fn):
    return lambda run: med(v for _, v in probe_series(run, probe, fn))


def claims_for(experiment: str, runs: dict[str, RunRecords], specs: list[RunSpec], lrs: list[float]) -> list[dict]:
    """Each claim of PAPER.md that the experiment tests, with the numbers behind it."""
    lr0 = lrs[0]
    c = []
    S = lambda arch, net, lr, m: _per_seed(runs, specs, arch, net, lr, m)  # noqa: E731
    if experiment == "train-compare":
        for lr in lrs:
            std, bn = S("vgg", "standard", lr, _test_acc), S("vgg", "bn", lr, _test_acc)
            c.append(_claim(f"fig1.bn_trains_better.lr{lr:g}", f"BN reaches a higher test accuracy than the standard "
                            f"VGG at lr {lr:g}", "test acc (BN) - test acc (standard), paired by seed",
                            _diff(bn, std), 0.0))
    if experiment == "ics-distrib":
        # Figure 2 compares training accuracy; noisy BN's test accuracy also pays for the noise
        # being off at evaluation, which is not the paper's point.
        acc = {net: S("vgg", net, lr0, lambda r: None if r.state == "diverged" else final_train(r)["acc"])
               for net in ("standard", "bn", "noisy_bn")}
        shift = {net: S("vgg", net, lr0, _median_probe("activation_stats", mean_shift))
                 for net in ("standard", "bn", "noisy_bn")}
        c.append(_claim("fig2.noisy_bn_beats_standard", "noisy BN trains better than the standard VGG",
                        "final train acc (noisy BN) - train acc (standard)", _diff(acc["noisy_bn"], acc["standard"]),
                        0.0))
        gap = [(n - s) / (b - s) if None not in (n, s, b) and b != s else None for n, s, b in
               zip(*(([acc[k].get(seed) for seed in sorted(acc["bn"])]) for k in ("noisy_bn", "standard", "bn")))]
        c.append(_claim("fig2.noisy_bn_close_to_bn", "noisy BN trains almost as well as BN: it closes most of the "
                        "gap between standard and BN", "(train acc noisy BN - standard) / (BN - standard)", gap, 0.5))
        c.append(_claim("fig2.noisy_bn_least_stable", "noisy BN's layer inputs shift more than BN's (ICS_distrib)",
                        "median Wasserstein-1 shift between consecutive measurements, noisy BN / BN",
                        _ratio(shift["noisy_bn"], shift["bn"]), 1.0))
        c.append(_claim("fig2.noisy_bn_shifts_more_than_standard",
                        "noisy BN's layer inputs shift more than the standard network's",
                        "median Wasserstein-1 shift, noisy BN / standard", _ratio(shift["noisy_bn"], shift["standard"]),
                        1.0))
    if experiment == "ics-opti":
        cos = lambda arch, net: S(arch, net, None, _median_probe(  # noqa: E731
            "ics_opti", lambda v: mean_over_layers(v, "cosine")))
        c.append(_claim("fig3.vgg_bn_not_less_ics", "for VGG, ICS_opti is similar or larger with BN",
                        "median cos(G, G') standard - BN (>= -0.05: BN's cosine is not clearly higher)",
                        _diff(cos("vgg", "standard"), cos("vgg", "bn")), -0.05))
        c.append(_claim("fig3.dln_standard_cosine_near_1", "the standard DLN's G and G' are almost aligned",
                        "median cos(G, G'), standard DLN", list(cos("dln", "standard").values()), 0.9))
        c.append(_claim("fig3.dln_bn_less_correlated", "the BN DLN's G and G' are much less correlated",
                        "median cos(G, G') standard DLN - BN DLN", _diff(cos("dln", "standard"), cos("dln", "bn")),
                        0.1))
        loss = lambda net: S("dln", net, None, _train_loss)  # noqa: E731
        c.append(_claim("fig3.dln_bn_trains_better", "yet the BN DLN trains better",
                        "final train loss, standard DLN / BN DLN", _ratio(loss("standard"), loss("bn")), 1.0))
    if experiment == "smoothness":
        for arch in ("vgg", "dln"):
            lr = lr0 if arch == "vgg" else None
            for cid, text, metric in (
                    ("loss_band", "the loss-variation band is narrower with BN", loss_band),
                    ("grad_predictiveness", "the gradient changes less along the gradient with BN", max_grad_change),
                    ("beta_eff", "effective beta-smoothness is lower with BN", beta_eff)):
                metric = _median_probe("gradient_sweep", metric)
                std, bn = S(arch, "standard", lr, metric), S(arch, "bn", lr, metric)
                c.append(_claim(f"fig4.{arch}.{cid}", f"{arch.upper()}: {text}",
                                "median over probe steps, standard / BN", _ratio(std, bn), 1.0))
            sharp = lambda net: S(arch, net, lr, _median_probe("sharpness", lambda v: v.get("value")))  # noqa: E731
            c.append(_claim(f"beyond.{arch}.sharpness", f"{arch.upper()}: the top Hessian eigenvalue is lower with BN "
                            "(beyond the paper)", "median sharpness, standard / BN",
                            _ratio(sharp("standard"), sharp("bn")), 1.0))
    if experiment == "norms":
        acc = {net: S("vgg", net, lr0, _test_acc) for net in ("standard", "bn", "l1", "l2", "linf")}
        beta = {net: S("vgg", net, lr0, _median_probe("gradient_sweep", beta_eff)) for net in acc}
        for net in ("l1", "l2", "linf"):
            c.append(_claim(f"appendix.{net}.trains_like_bn", f"{net} normalisation trains as well as BN "
                            "(within 3 points) or better", f"test acc ({net}) - test acc (BN)",
                            _diff(acc[net], acc["bn"]), -0.03))
            c.append(_claim(f"appendix.{net}.smoother_than_standard", f"{net} normalisation smooths the landscape "
                            "(beta_eff lower than standard)", f"median beta_eff, standard / {net}",
                            _ratio(beta["standard"], beta[net]), 1.0))
    return c


def summarise(experiment: str, specs: list[RunSpec], out: Path, preset: dict, seeds: list[int]) -> dict:
    """Read the experiment's runs back and write ``OUT/<experiment>/summary.json``."""
    runs = {s.name: read_run(Path(out) / "runs" / s.name) for s in specs if (Path(out) / "runs" / s.name).exists()}
    table = {}
    for s in specs:
        r = runs.get(s.name)
        table[s.name] = {"arch": s.arch, "net": s.net, "lr": s.lr, "seed": s.seed,
                         "status": r.state if r else "missing", "status_text": r.describe_status() if r else "missing",
                         "diverged_step": r.status.get("diverged_step") if r else None,
                         "final_train": final_train(r) if r else None, "final_test": final_test(r) if r else None}
    summary = {"experiment": experiment, "preset": preset["name"], "seeds": seeds, "runs": table,
               "claims": claims_for(experiment, runs, specs, preset["lrs"])}
    target = Path(out) / experiment
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / ".summary.json.tmp"
    tmp.write_text(json.dumps(json_safe(summary), indent=2))
    tmp.replace(target / "summary.json")
    return summary


EXPERIMENTS = ("train-compare", "ics-distrib", "ics-opti", "smoothness", "norms")


def run_experiment(experiment: str, preset_name: str, seeds: int, out: str | Path, data_dir=None,
                   device: str | None = None, overrides: list[str] = (), launch: Launch | None = None,
                   log: Callable[[str], None] = _say) -> dict:
    from landscape.config import parse_override

    if seeds < 1:
        raise UserError(f"--seeds must be at least 1; got {seeds}")
    preset = load_preset(preset_name)
    parsed = [parse_override(o) for o in overrides]
    seed_list = list(range(seeds))
    specs = plan(experiment, preset, seed_list, parsed)
    execute(specs, Path(out), data_dir, device, launch, log)
    return summarise(experiment, specs, Path(out), preset, seed_list)
