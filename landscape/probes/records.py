"""Records: the one home of what a line of ``metrics.jsonl`` may be, and of its scalars.

Three kinds, each one JSON object per line with an integer ``step`` (the step it belongs to):

- ``{"kind": "train", "step", "loss", "acc", ...}``: means over a logging interval;
- ``{"kind": "test", "step", "loss", "acc"}``: the test split;
- ``{"kind": "probe", "probe": NAME, "step", "values": {...}, "cost": {...}}``: one probe at one step
  (its values are read through the probe's entry, :mod:`landscape.probes.registry`).

:func:`problem` says why a parsed line is not a usable record; every reader (the report, the
claims, ``landscape export``) skips such lines and lists them. :func:`scalars_of` gives a
record's scalars under their documented names; :class:`Fanout` sends records to outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from landscape.probes import registry

KINDS = ("train", "test", "probe")
MAX_STEP = 2**53  # steps beyond this are not steps (JSON numbers lose integers above it)
METRICS = ("loss", "acc", "epoch", "examples_per_s", "elapsed_s")  # train/test fields that are numbers or null


def problem(record: Any) -> str | None:
    """Why a parsed line cannot be used as a record (None when it can)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    kind = record.get("kind")
    if not isinstance(kind, str):
        return "no 'kind'"
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        return "'step' is not an integer"
    if not 0 <= step <= MAX_STEP:
        return f"'step' {step if abs(step) < 10**20 else 'of ' + str(len(str(abs(step)))) + ' digits'} is out of range"
    if kind == "probe":
        if not (isinstance(record.get("probe"), str) and isinstance(record.get("values"), dict)):
            return "a probe record without a name or values"
    elif kind in ("train", "test"):
        bad = [
            k
            for k in METRICS
            if record.get(k) is not None and (isinstance(record[k], bool) or not isinstance(record[k], (int, float)))
        ]
        if bad:
            return f"'{bad[0]}' is not a number"
    if record.get("cost") is not None and not isinstance(record["cost"], dict):
        return "'cost' is not an object"
    return None


def json_safe(x: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null (the record keeps its other fields)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def scalars_of(record: dict) -> dict[str, float]:
    """A record's scalars under their documented names (``landscape/train_loss``, ``landscape/<probe
    quantity>``, ``landscape/<quantity>/<layer>``), non-finite and missing values left out."""
    if problem(record) is not None:
        return {}
    kind = record["kind"]
    if kind in ("train", "test"):
        return {
            f"landscape/{kind}_{k}": v for k in ("loss", "acc") if (v := registry.number(record.get(k))) is not None
        }
    if kind == "probe":
        return {f"landscape/{k}": v for k, v in registry.scalars(record["probe"], record["values"]).items()}
    return {}


class Fanout:
    """A record sink that writes to ``sink`` (the run) first, then to every output (anything with
    ``scalars(step, values)`` and ``close()``)."""

    def __init__(self, sink: Callable[[dict], None], outputs: Sequence):
        self.sink, self.outputs = sink, list(outputs)

    def __call__(self, record: dict) -> None:
        self.sink(record)
        if not self.outputs:
            return
        values = scalars_of(record)
        if not values:
            return
        for out in self.outputs:
            out.scalars(int(record.get("step", 0)), values)

    def close(self) -> None:
        for out in self.outputs:
            out.close()
        self.outputs = []
