"""Reading run directories back: the one place experiments' summaries and the report get records from.

Nothing here computes a new measurement; it selects, groups and reduces recorded numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import yaml

from landscape.files import read_text
from landscape.names import NETS
from landscape.probes import legacy, registry
from landscape.runs import describe_status, read_json, read_metrics


@dataclass
class RunRecords:
    """Everything a run directory holds, read leniently: a missing or unreadable file is
    listed in ``problems`` instead of raising."""

    path: Path
    name: str
    config: dict | None
    env: dict | None
    status: dict
    records: list[dict]
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.status.get("status", "unknown")

    def kind(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]

    def probe(self, name: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "probe" and r.get("probe") == name]

    def keep_probe_steps(self, keep) -> RunRecords:
        """A copy whose probe records are only those at steps where ``keep(step)`` holds."""
        records = [r for r in self.records if r.get("kind") != "probe" or keep(r["step"])]
        return dataclasses.replace(self, records=records)

    def describe_status(self) -> str:
        return describe_status(self.status)


MAX_CONFIG_NODES = 100_000  # a run's config has a few hundred; an alias bomb has billions


def json_plain(x: Any, depth: int = 0, budget: list | None = None) -> Any:
    """YAML's values as JSON's (dates and other tags as strings). Deeper than 100 levels, or more
    than MAX_CONFIG_NODES values once aliases are expanded, is not a config: ValueError."""
    budget = [MAX_CONFIG_NODES] if budget is None else budget
    budget[0] -= 1
    if depth > 100 or budget[0] < 0:
        raise ValueError("nested too deep or too large")
    if isinstance(x, dict):
        return {str(k): json_plain(v, depth + 1, budget) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_plain(v, depth + 1, budget) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def read_run(path: str | Path) -> RunRecords:
    path = Path(path)
    problems = []
    config = None
    for name in ("config.yaml", "monitor.yaml"):
        f = path / name
        if f.exists():
            try:
                config = json_plain(yaml.safe_load(read_text(f)))
            except (OSError, yaml.YAMLError, RecursionError, ValueError):
                problems.append(f"{name} is unreadable (not YAML, or nested too deep)")
                config = None
            if config is not None and not isinstance(config, dict):
                problems.append(f"{name} is not a mapping")
                config = None
            if config is not None:
                config = legacy.upgrade_config(config)  # a run of an earlier release, in today's layout
            break
    else:
        problems.append("no config.yaml")
    env = read_json(path / "env.json")
    if env is None:
        problems.append("env.json missing, unreadable or not a JSON object")
    status = read_json(path / "status.json")
    if status is None:
        problems.append("status.json missing, unreadable or not a JSON object")
        status = {}
    if not isinstance(status.get("status", "unknown"), str):
        problems.append("status.json: 'status' is not a string")
        status = {}
    if not (path / "metrics.jsonl").exists():
        problems.append("metrics.jsonl missing")
    records = legacy.upgrade_records(read_metrics(path / "metrics.jsonl", problems))  # earlier releases' names
    return RunRecords(path, path.name, config, env, status, records, problems)


def run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run directory at or below each path (a run directory holds status.json,
    config.yaml, monitor.yaml or metrics.jsonl), in path order, without duplicates; nothing is read."""
    seen, out = set(), []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            continue
        candidates = [p] if _is_run(p) else sorted({d.parent for d in p.rglob("*") if d.name in _MARKERS})
        for c in candidates:
            key = c.resolve()
            if key not in seen and _is_run(c):
                seen.add(key)
                out.append(c)
    return out


def find_runs(paths: list[str | Path]) -> list[RunRecords]:
    """Every run directory at or below each path, read (see :func:`run_dirs`)."""
    return [read_run(c) for c in run_dirs(paths)]


_MARKERS = ("status.json", "config.yaml", "monitor.yaml", "metrics.jsonl")


def _is_run(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in _MARKERS)


# ------------------------------------------------------------------ reductions of recorded numbers


def finite(values) -> list[float]:
    """The finite numbers among ``values`` (None, NaN, inf, strings and other types are left out)."""
    if not isinstance(values, (list, tuple)) and not hasattr(values, "__next__"):
        return []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def med(values) -> float | None:
    vals = finite(values)
    return median(vals) if vals else None


def final_train(run: RunRecords, last: int = 2) -> dict:
    """Mean train loss/accuracy over the last ``last`` train records (None if absent or non-finite)."""
    recs = run.kind("train")[-last:]
    out = {}
    for key in ("loss", "acc"):
        vals = finite(r.get(key) for r in recs)
        out[key] = sum(vals) / len(vals) if recs and len(vals) == len(recs) else None
    return out


def final_test(run: RunRecords) -> dict:
    recs = run.kind("test")
    return (
        {k: (finite([recs[-1].get(k)]) or [None])[0] for k in ("loss", "acc")} if recs else {"loss": None, "acc": None}
    )


def final_train_loss(run: RunRecords) -> float | None:
    """Final train loss; a diverged run counts as infinitely bad (it is compared, not dropped)."""
    return math.inf if run.state == "diverged" else final_train(run)["loss"]


def final_train_acc(run: RunRecords) -> float | None:
    """Final train accuracy; a diverged run counts as 0 (as for test accuracy: compared, not dropped,
    so "the normalised network trains better" holds against a baseline that diverged)."""
    return 0.0 if run.state == "diverged" else final_train(run)["acc"]


def final_test_acc(run: RunRecords) -> float | None:
    """Final test accuracy; a diverged run counts as chance-or-worse (0), whatever it scored before diverging."""
    return 0.0 if run.state == "diverged" else final_test(run)["acc"]


def probe_series(run: RunRecords, probe: str, fn) -> list[tuple[int, Any]]:
    """``[(step, value)]`` over a probe's records: ``fn`` is the name of one of the probe's
    quantities (its entry's), or a function of the record's values. Records whose value is
    missing or of the wrong shape give None."""
    out = []
    for r in run.probe(probe):
        if isinstance(fn, str):
            out.append((r["step"], registry.quantity(probe, r["values"], fn)))
            continue
        try:
            out.append((r["step"], fn(r["values"])))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out


def series(probe: str, key: str):
    """A run's ``[(step, quantity)]`` with the value present, for figures:
    ``series("sharpness", "over_threshold")(run)``."""

    def fn(run: RunRecords) -> list[tuple[int, Any]]:
        return [(s, v) for s, v in probe_series(run, probe, key) if v is not None]

    return fn


def probe_views(run: RunRecords, probe: str, key: str) -> list[tuple[int, Any]]:
    """``[(step, view)]`` of one of the probe's declared views (its entry's), records without it left out."""
    return [(r["step"], v) for r in run.probe(probe) if (v := registry.view(probe, r["values"], key)) is not None]


def stability_probe(run: RunRecords) -> str:
    """The sharpness a run's stability is read from: ``preconditioned_sharpness`` (of P^-1 H: what Adam's threshold
    bounds; under SGD the same as H's) where the run recorded it, else ``sharpness``."""
    return "preconditioned_sharpness" if run.probe("preconditioned_sharpness") else "sharpness"


def stability_series(which: str = "over_threshold"):
    """A run's ``[(step, value)]`` of its stability sharpness (``which``: ``"value"`` or ``"over_threshold"``, over
    the threshold that bounds it), from :func:`stability_probe`'s records."""
    keys = {
        "value": ("sharpness", "preconditioned_sharpness"),
        "over_threshold": ("over_threshold", "preconditioned_over_threshold"),
    }[which]

    def fn(run: RunRecords) -> list[tuple[int, Any]]:
        probe = stability_probe(run)
        return series(probe, keys[probe == "preconditioned_sharpness"])(run)

    return fn


def quantity_of(probe: str, key: str):
    """One quantity of a probe's record values, as a function ``values -> number | None`` (for claims)."""

    def fn(values: dict):
        return registry.quantity(probe, values, key)

    fn.__name__ = key
    return fn


# The per-record quantities claims and figures read most (the probe entries define them).
loss_band = quantity_of("gradient_sweep", "loss_band")  # max - min of L(w - eta g) over the grid
max_grad_change = quantity_of("gradient_sweep", "grad_change")  # the largest gradient change over the grid
beta_eff = quantity_of("gradient_sweep", "beta_eff")


def mean_over_layers(values: dict, key: str, skip_first: bool = True) -> float | None:
    """Mean of a per-layer ICS value; the first layer (G' = G by definition) is left out."""
    return registry.number(registry.mean_over_layers(values, key, skip_first)) if isinstance(values, dict) else None


def mean_shift(values: dict) -> float | None:
    return registry.quantity("activation_stats", values, "mean_shift")


def median_probe(probe: str, fn) -> Callable[[RunRecords], float | None]:
    """The median over a run's probe steps of ``fn`` (a quantity's name or a function of the values)."""

    def metric(run: RunRecords) -> float | None:
        return med(v for _, v in probe_series(run, probe, fn))

    metric.__name__ = f"median_{probe}_{fn if isinstance(fn, str) else getattr(fn, '__name__', 'value')}"
    return metric


# ------------------------------------------------------------------ an experiment's runs


class RunTable:
    """An experiment's runs as its summary describes them: ``rows`` maps each run name to
    ``{"arch", "net", "lr", "seed", ...}``; ``records`` holds the runs that were found.

    Claims and report figures select runs by these fields, never by re-reading configs.
    """

    def __init__(self, rows: dict[str, dict], records: dict[str, RunRecords]):
        self.rows = {name: row for name, row in rows.items() if isinstance(row, dict)}
        self.records = records

    def select(
        self, arch: str | None = None, net: str | None = None, lr: float | None = None
    ) -> list[tuple[dict, RunRecords]]:
        out = []
        for name, row in self.rows.items():
            if name not in self.records:
                continue
            if (
                (arch is None or row.get("arch") == arch)
                and (net is None or row.get("net") == net)
                and (lr is None or row.get("lr") == lr)
            ):
                out.append((row, self.records[name]))
        return out

    def per_seed(self, metric, arch: str, net: str, lr: float | None = None) -> dict[int, float | None]:
        """``{seed: metric(run)}`` for the runs of one network (paired across networks by seed)."""
        return {row.get("seed"): metric(run) for row, run in self.select(arch, net, lr)}

    def groups(self, arch: str | None = None, lr: float | None = None) -> dict[str, list[RunRecords]]:
        """Runs by network, in the paper's order; the seeds of one network share a group."""
        out: dict[str, list[RunRecords]] = {}
        for row, run in self.select(arch, lr=lr):
            out.setdefault(str(row.get("net", run.name)), []).append(run)
        order = {n: i for i, n in enumerate(NETS)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))

    def only(self, variant: str) -> RunTable:
        """The runs of one variant (e.g. one DLN regime), with the variant label dropped, so the
        claims and figures written for an experiment's main runs apply to them unchanged."""
        rows = {
            n: {k: v for k, v in r.items() if k != "variant"}
            for n, r in self.rows.items()
            if r.get("variant", "") == variant
        }
        return RunTable(rows, {n: rec for n, rec in self.records.items() if n in rows})

    def map_runs(self, fn) -> RunTable:
        """The same rows with ``fn(run)`` in place of each run's records."""
        return RunTable(self.rows, {n: fn(r) for n, r in self.records.items()})

    def settings(self, arch: str, variants) -> list[tuple[str, float, dict[str, list[RunRecords]]]]:
        """``(variant, lr, runs by network)`` for each variant (e.g. optimizer) and learning rate present."""
        out = []
        for variant in variants:
            sub = self.only(variant)
            out += [(variant, lr, g) for lr in sub.lrs(arch) if (g := sub.groups(arch, lr))]
        return out

    def variants(self) -> list[str]:
        """The variant labels of the rows, in order of first appearance."""
        return list(dict.fromkeys(str(r["variant"]) for r in self.rows.values() if r.get("variant")))

    def lrs(self, arch: str | None = None) -> list[float]:
        return sorted(
            {
                row["lr"]
                for row in self.rows.values()
                if isinstance(row.get("lr"), (int, float)) and (arch is None or row.get("arch") == arch)
            }
        )
