"""Experiment summaries as the report and ``landscape claims`` read them: every ``summary.json`` under
the paths given, each claim row with every field in the type the readers expect."""

from __future__ import annotations

import math
from pathlib import Path

from landscape.runs import read_json
from landscape.stats import adjust, judge


def summary_files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(p.rglob("summary.json"))
        elif p.name == "summary.json":
            out.append(p)
    return out


def find_summaries(paths: list[Path]) -> list[tuple[Path, dict | None]]:
    return [(f, _summary(f)) for f in summary_files(paths)]


def _summary(path: Path) -> dict | None:
    """A summary.json in the shape the report uses, or None (listed as a problem) if it has none."""
    d = read_json(path)
    if d is None or not isinstance(d.get("runs", {}), dict):
        return None
    claims = d.get("claims", [])
    d["claims"] = (
        adjust([_claim(rejudge(c)) for c in claims if isinstance(c, dict)]) if isinstance(claims, list) else []
    )
    d["seeds"] = (
        [x for x in d["seeds"] if isinstance(x, int) and not isinstance(x, bool)]
        if isinstance(d.get("seeds"), list)
        else []
    )
    for key in ("experiment", "preset"):  # names, or absent: a list or an object here is not a summary's
        if not isinstance(d.get(key), str):
            d.pop(key, None)
    d["experiment"] = d.get("experiment") or path.parent.name
    return d


def rejudge(c: dict) -> dict:
    """A claim judged again from its per-seed values by today's rule (landscape.stats), so a summary written by an
    earlier release prints the statistic it is tested by; one without usable values is left as it is."""
    per_seed, threshold = c.get("per_seed"), c.get("threshold")
    if not isinstance(per_seed, dict) or isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        return c
    values = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in per_seed.values()]
    direction = c.get("direction") if c.get("direction") in ("above", "below") else "above"
    transform = c.get("transform") if c.get("transform") in ("log", "none") else "none"
    try:
        judged = judge([math.nan if v is None else v for v in values], float(threshold), direction, transform)
    except ValueError:
        return c
    return {**c, **judged}


def _claim(c: dict) -> dict:
    """A claim row with every field the template reads, in the type it expects."""

    def number(x):
        return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    ci = c.get("ci")
    ok_ci = isinstance(ci, list) and len(ci) == 2 and all(number(v) is not None for v in ci)
    text = {
        k: str(c.get(k) or "")
        for k in ("id", "claim", "quantity", "direction", "layers", "verdict", "why", "transform", "note")
    }
    signs = c.get("signs")
    ok_signs = isinstance(signs, dict) and all(isinstance(signs.get(k), int) for k in ("k", "n"))
    return {
        **c,
        **text,
        "mean": number(c.get("mean")),
        "ci": ci if ok_ci else None,
        "n": number(c.get("n")),
        "threshold": number(c.get("threshold")),
        "bound": number(c.get("bound")),
        "signs": signs if ok_signs else None,
        "seeds_needed": seeds_needed(c.get("seeds_needed")),
        "p_two": number(c.get("p_two")),
        "headline": c.get("headline") is not False,
    }


def seeds_needed(x) -> list | None:
    """A claim's seed estimate as ``[low, high]`` (either end may be None: beyond the estimate); one number, as
    earlier releases wrote it, is both ends."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return [x, x]
    if (
        isinstance(x, list)
        and len(x) == 2
        and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in x)
    ):
        return x
    return None
