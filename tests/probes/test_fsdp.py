"""Probes under FSDP2 (``torch.distributed.fsdp.fully_shard``): two processes on the gloo backend (CPU), float64.

Each rank holds half of a 16-example global batch and its shard (rows of every weight) of the parameters. The
probes that run on a sharded model (each entry's ``sharded``) keep every vector sharded, sum inner products over
the ranks and evaluate the sharded module itself; their values must equal those one process records on the global
batch with the unsharded model (relative 1e-7 where both are exact; curvature's Hessian-vector product is a
central difference under FSDP2, exact by double backward on one process: 1e-6). Training with probes on ends
bitwise where it ends with probes off on every rank; only rank 0 writes; a probe that does not run sharded is
refused on every rank with one line.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every
from tests.probes.test_distributed import _close, _init, _port, run_until_a_rank_fails

pytest.importorskip("torch.distributed.fsdp")

STEPS = 3
PROBES = [
    "gradient_sweep",
    "sharpness",
    "preconditioned_sharpness",
    "layer_sharpness",
    "update_sweep",
    "critical_sharpness",
    "curvature",
    "layer_grad_norm",
    "edge_eigenvalues",
]
# Lanczos run to the whole space (the model has 112 weights), so its top eigenvalue is exact from any start
OPTIONS = {
    "sharpness": {"iters": 200, "tol": 1e-12},
    "preconditioned_sharpness": {"iters": 200, "tol": 1e-12},
    "layer_sharpness": {"iters": 200, "tol": 1e-12},
    # every eigenvalue above 0.05 x the threshold, the Krylov space grown to the whole space: start-independent
    "edge_eigenvalues": {"fraction": 0.05, "max_products": 400, "min_products": 200, "tol": 1e-9},
}
# Hessian-vector products are central differences under FSDP2, exact by double backward on one process
LOOSER = {
    "curvature": 1e-6,
    "sharpness": 1e-6,
    "preconditioned_sharpness": 1e-6,
    "layer_sharpness": 1e-6,
    "edge_eigenvalues": 1e-6,
}
# Lanczos's error bound once converged is rounding noise (1e-13 against 6e-14), and so the products it took to get
# below tol can differ by one (21 against 20): neither is compared; the eigenvalues are
ROUNDING = {"residual", "residuals", "hvps"}


def _compared(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in ROUNDING}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 4)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (16,), generator=g)


def _shard(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),  # preconditioned sharpness: Adam's P, sharded like the weights
}


def _train(model, x, y, probes, optim="sgd", options=None, steps=STEPS):
    records = []
    opt = OPTIMIZERS[optim](model.parameters())
    monitor = Monitor(
        records.append,
        model,
        opt,
        nn.functional.cross_entropy,
        every(1),
        probes=probes,
        options=options or {k: v for k, v in OPTIONS.items() if k in probes},
        step_hook=False,
        layers=["type:Linear"],
    )
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        monitor.observe(step, (x, y), loss)
        opt.step()
        monitor.after_step()
    monitor.close()
    return records


# Probes with random vectors: under FSDP2 each parameter's draw is cut into the ranks' row chunks, so one process
# making the same draws holds the same vectors; compared with a literal computation on the exact Hessian.
RANDOM = ("hessian_trace", "spectral_density")
RANDOM_OPTIONS = {
    method: {"hessian_trace": {"samples": 6, "method": method}, "spectral_density": {"vectors": 2, "steps": 6}}
    for method in ("hutchinson", "hutch++")
}


def _draws(model, k, gen, kind):
    rows = []
    for _ in range(k):
        parts = []
        for p in model.parameters():
            if kind == "rademacher":
                parts.append(torch.randint(0, 2, tuple(p.shape), generator=gen, dtype=torch.int8).double() * 2 - 1)
            else:
                parts.append(torch.randn(tuple(p.shape), generator=gen, dtype=torch.float64))
        rows.append(torch.cat([t.reshape(-1) for t in parts]))
    return torch.stack(rows)


def _local(model):
    return {n: (p.to_local() if hasattr(p, "to_local") else p).detach().clone() for n, p in model.named_parameters()}


def _worker(rank, port, folder):
    dist = _init(rank, port)
    out = {}
    try:
        x, y = _data()
        half = slice(8 * rank, 8 * rank + 8)
        out["records"], out["bitwise"] = {}, {}
        for optim in OPTIMIZERS:
            on = _shard(_model())
            out["records"][optim] = _train(on, x[half], y[half], PROBES, optim)
            off = _shard(_model())
            _train(off, x[half], y[half], [], optim)
            w_on, w_off = _local(on), _local(off)
            out["bitwise"][optim] = all(torch.equal(w_on[n], w_off[n]) for n in w_on)
        out["shard_rows"] = {n: tuple(v.shape) for n, v in w_on.items()}
        out["random"] = {
            method: _train(_shard(_model()), x[half], y[half], list(RANDOM), options=RANDOM_OPTIONS[method], steps=1)
            for method in RANDOM_OPTIONS
        }
        try:
            _train(_shard(_model()), x[half], y[half], ["loss_slice"])
            out["refused"] = None
        except ValueError as exc:
            out["refused"] = str(exc)
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(_port(), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_each_sharded_probe_under_fsdp2_equals_one_process_on_the_global_batch(fsdp_results, optim):
    x, y = _data()
    reference = _train(_model(), x, y, PROBES, optim)
    sharded = fsdp_results[0]["records"][optim]
    assert fsdp_results[1]["records"][optim] == []  # only rank 0 writes
    assert [(r["probe"], r["step"]) for r in sharded] == [(r["probe"], r["step"]) for r in reference]
    bad = [
        (r["probe"], r["step"], r["values"], s["values"])
        for r, s in zip(sharded, reference)
        if not _close(_compared(r["values"]), _compared(s["values"]), LOOSER.get(r["probe"], 1e-7))
    ]
    assert not bad, bad[0]
    assert fsdp_results[0]["shard_rows"]["0.weight"] == (4, 6)  # each rank held half of every weight's rows


def test_probes_never_change_fsdp2_training_on_any_rank(fsdp_results):
    assert all(all(r["bitwise"].values()) for r in fsdp_results)


def test_a_probe_that_does_not_run_sharded_is_refused_on_every_rank(fsdp_results):
    for r in fsdp_results:
        assert r["refused"] is not None and "loss_slice" in r["refused"] and "\n" not in r["refused"]
        assert "critical_sharpness" in r["refused"]  # the ones that do are named


@pytest.mark.parametrize("method", list(RANDOM_OPTIONS))
def test_trace_and_density_under_fsdp2_equal_a_literal_computation_with_the_same_vectors(fsdp_results, method):
    from landscape.probes.linalg import lanczos, tridiagonal
    from tests.probes.reference import full_hessian

    x, y = _data()
    model = _model()
    H, _, _, _ = full_hessian(model, (x, y))
    records = {r["probe"]: r["values"] for r in fsdp_results[0]["random"][method]}
    gen = torch.Generator().manual_seed(1)  # the probes' seed is the step
    if method == "hutchinson":
        Z = _draws(model, 6, gen, "rademacher")
        expected = float(torch.stack([z @ H @ z for z in Z]).mean())
    else:
        S = _draws(model, 2, gen, "rademacher")
        Q, _ = torch.linalg.qr(H @ S.T)
        G = _draws(model, 2, gen, "rademacher")
        G = G - (G @ Q) @ Q.T
        expected = float(torch.trace(Q.T @ H @ Q)) + float(torch.stack([g @ H @ g for g in G]).mean())
    assert records["hessian_trace"]["value"] == pytest.approx(expected, rel=1e-6)
    for i, (nodes, weights) in enumerate(
        zip(records["spectral_density"]["nodes"], records["spectral_density"]["weights"])
    ):
        q = _draws(model, 1, torch.Generator().manual_seed(1 + i), "normal")[0]
        alphas, betas, _ = lanczos(lambda v: H @ v, q / q.norm(), 6)
        evals, evecs = torch.linalg.eigh(tridiagonal(alphas, betas))
        assert nodes == pytest.approx(evals.tolist(), rel=1e-6, abs=1e-9)
        assert weights == pytest.approx((evecs[0] ** 2).tolist(), rel=1e-5, abs=1e-9)


def test_an_fsdp1_model_is_refused_in_one_line():
    """FSDP1 flattens parameters into FlatParameters: probes would read the wrong vectors, so the Monitor refuses.
    FSDP1 cannot be built on a CPU-only machine ("FSDP needs a non-CPU accelerator device"), so a module of its
    class name stands in for it (the check reads the class name, so that importing FSDP1 is never needed)."""

    class FullyShardedDataParallel(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = FullyShardedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="FSDP1") as exc:
        Monitor(lambda r: None, model, opt, nn.functional.cross_entropy, every(1), probes=["gradient_sweep"])
    assert "\n" not in str(exc.value) and "fully_shard" in str(exc.value)


def _failing_worker(rank, port, folder):
    _init(rank, port)
    model = _model()
    _shard(model)
    x, y = _data()
    run_until_a_rank_fails(rank, folder, model, x[8 * rank : 8 * rank + 8], y[8 * rank : 8 * rank + 8], step_hook=False)


def test_a_rank_failing_mid_probe_under_fsdp2_ends_the_other_with_one_line(tmp_path):
    """A rank that fails inside a probe leaves the other waiting in one of FSDP2's all-gathers or in the probe's
    own all-reduce: it ends with one line naming the probe and step, not a hang or a traceback."""
    mp.spawn(_failing_worker, args=(_port(), str(tmp_path)), nprocs=2, join=True)
    own, other = (tmp_path / "rank1.txt").read_text(), (tmp_path / "rank0.txt").read_text()
    assert own == "own: rank 1 ran out of memory"
    assert other.startswith("probe sharpness at step 1 on rank 0: another rank failed or left") and "\n" not in other
