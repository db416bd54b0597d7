"""Probes under DistributedDataParallel: two processes on the gloo backend (CPU), float64.

Each rank holds half of a 16-example global batch, as DDP trains. Every probe's value under DDP must equal
the value one process records on the global batch (relative 1e-7: float64, where the only difference is
the order of additions in the all-reduce), with BatchNorm normalising each half by its own statistics as
DDP does (the single-process reference runs the BN model on each half separately and averages the
losses). Training with probes on ends bitwise where it ends with probes off, on every rank; only rank 0
writes; ranks that disagree on the schedule are refused on both; a rank that fails mid-probe ends the
other rank's probe with one line, not a hang.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every

STEPS = 3
PROBES = [
    "gradient_sweep",
    "sharpness",
    "curvature",
    "layer_sharpness",
    "hessian_trace",
    "spectral_density",
    "loss_slice",
    "ics_opti",
    "layer_grad_norm",
    "update_sweep",
    "critical_sharpness",
    "batch_sharpness",
    "edge_eigenvalues",
]
OPTIONS = {
    "sharpness": {"iters": 8, "tol": 1e-12},
    "hessian_trace": {"samples": 4},
    "spectral_density": {"vectors": 1, "steps": 4},
    "layer_sharpness": {"iters": 4},
    "batch_sharpness": {"batches": 1},
    "edge_eigenvalues": {"max_products": 8, "min_products": 8, "fraction": 0.0},
    "loss_slice": {"points": 3},
}
LOCAL = {"activation_stats"}  # statistics of rank 0's own activations: not averaged (docs/scale.md)


class Halves(nn.Module):
    """The single-process reference of a DDP run on 2 ranks: each half of the batch through the model on
    its own (BatchNorm with that half's statistics), the outputs side by side."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        h = len(x) // 2
        return torch.cat([self.model(x[:h]), self.model(x[h:])])


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    cnn = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()
    return {"mlp": mlp, "cnn": cnn}


def _data(kind):
    g = torch.Generator().manual_seed(1)
    x = (
        torch.randn(16, 6, generator=g, dtype=torch.float64)
        if kind == "mlp"
        else torch.randn(16, 3, 6, 6, generator=g, dtype=torch.float64)
    )
    return x, torch.randint(0, 3, (16,), generator=g)


def _options(name):
    return {name: OPTIONS[name]} if name in OPTIONS else {}


def _train(model, x, y, probes, out, wrap=None, schedule=None):
    """STEPS of SGD on (x, y) with a Monitor on every step; returns the records and the final weights."""
    records = []
    net = wrap(model) if wrap else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    kw = (
        {
            "probes": probes,
            "options": {k: v for p in probes for k, v in _options(p).items()},
            "layers": ["type:Linear"]
            + (["type:Conv2d"] if any(isinstance(m, nn.Conv2d) for m in model.modules()) else []),
        }
        if probes
        else {"probes": []}
    )
    monitor = Monitor(
        out if out is not None else records.append,
        net,
        opt,
        nn.functional.cross_entropy,
        schedule or every(1),
        step_hook=False,
        **kw,
    )
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        monitor.observe(step, (x, y), loss)
        opt.step()
        monitor.after_step()
    monitor.close()
    return records, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank, port):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    return dist


def _worker(rank, port, folder):
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist = _init(rank, port)
    out = {}
    try:
        for kind, model in _models().items():
            x, y = _data(kind)
            half = slice(8 * rank, 8 * rank + 8)
            recs, w_on = _train(model, x[half], y[half], PROBES, None, wrap=DDP)
            model_off = _models()[kind]
            _, w_off = _train(model_off, x[half], y[half], [], None, wrap=DDP)
            out[kind] = {"records": recs, "bitwise": all(torch.equal(w_on[k], w_off[k]) for k in w_on)}
        # a run directory: only rank 0 creates and writes it
        model = _models()["mlp"]
        x, y = _data("mlp")
        _train(
            model,
            x[8 * rank : 8 * rank + 8],
            y[8 * rank : 8 * rank + 8],
            ["gradient_sweep"],
            os.path.join(folder, "run"),
            wrap=DDP,
        )
        # ranks that disagree on the schedule are refused on both, before any probe
        try:
            _train(_models()["mlp"], x, y, ["gradient_sweep"], None, wrap=DDP, schedule=every(1 + rank))
            out["disagree"] = None
        except ValueError as exc:
            out["disagree"] = str(exc)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _close(a, b, rel=1e-7):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close(u, v, rel) for u, v in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12) or a == b
    return a == b


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_port(), str(folder)), nprocs=2, join=True)
    return folder, [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_every_probe_under_ddp_equals_one_process_on_the_global_batch(ddp_results, kind):
    _, ranks = ddp_results
    x, y = _data(kind)
    reference, _ = _train(_models()[kind], x, y, PROBES, None, wrap=Halves if kind == "cnn" else None)
    ddp = ranks[0][kind]["records"]
    assert ranks[1][kind]["records"] == []  # rank 1 writes nothing
    assert [(r["probe"], r["step"]) for r in ddp] == [(r["probe"], r["step"]) for r in reference]
    reference = json.loads(json.dumps(reference).replace('"model.', '"'))  # Halves' layer names: "model.0" is "0"
    bad = [(r["probe"], r["step"]) for r, s in zip(ddp, reference) if not _close(r["values"], s["values"])]
    assert bad == []


def test_probes_leave_ddp_training_bitwise_unchanged_on_every_rank(ddp_results):
    _, ranks = ddp_results
    assert all(r[kind]["bitwise"] for r in ranks for kind in ("mlp", "cnn"))


def test_only_rank_0_writes_the_run_directory(ddp_results):
    folder, _ = ddp_results
    lines = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["probe"], r["step"]) for r in lines if r["kind"] == "probe"] == [
        ("gradient_sweep", s) for s in range(1, STEPS + 1)
    ]


def test_ranks_that_disagree_on_the_schedule_are_refused_on_every_rank(ddp_results):
    _, ranks = ddp_results
    for r in ranks:
        assert r["disagree"] is not None and "disagree on the Monitor's schedule" in r["disagree"]
        assert "\n" not in r["disagree"]


def run_until_a_rank_fails(rank, folder, net, x, y, **monitor_options):
    """Train ``net`` on this rank's batch with sharpness probed every step while rank 1's loss raises inside its
    first probe; write what each rank ended with (the probe's one line, or ``own:`` and its own error) to
    ``folder/rank{rank}.txt`` and leave without the broken group's teardown."""
    from landscape.probes.distributed import ProbeFailure

    calls = [0]

    def loss_fn(out, target):
        calls[0] += 1
        if rank == 1 and calls[0] > 3:  # rank 1 fails inside its first probe
            raise RuntimeError("rank 1 ran out of memory")
        return nn.functional.cross_entropy(out, target)

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    monitor = Monitor(lambda r: None, net, opt, loss_fn, every(1), probes=["sharpness"], timeout=10, **monitor_options)
    message = None
    try:
        for step in range(1, 3):
            opt.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            monitor.observe(step, (x, y), loss)
            opt.step()
    except ProbeFailure as exc:
        message = str(exc)
    except RuntimeError as exc:
        message = "own: " + str(exc)
    with open(os.path.join(folder, f"rank{rank}.txt"), "w") as f:
        f.write(message or "")
    os._exit(0)  # the group is broken: leave without its teardown


def _failing_worker(rank, port, folder):
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, port)
    x, y = _data("mlp")
    run_until_a_rank_fails(rank, folder, DDP(_models()["mlp"]), x[8 * rank : 8 * rank + 8], y[8 * rank : 8 * rank + 8])


def test_a_rank_failing_mid_probe_ends_the_other_with_one_line(tmp_path):
    mp.spawn(_failing_worker, args=(_port(), str(tmp_path)), nprocs=2, join=True)
    own, other = (tmp_path / "rank1.txt").read_text(), (tmp_path / "rank0.txt").read_text()
    assert own == "own: rank 1 ran out of memory"
    assert other.startswith("probe sharpness at step 2 on rank 0: another rank failed or left") and "\n" not in other
