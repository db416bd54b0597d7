"""The edge of stability (landscape.probes.edge): batch sharpness and the eigenvalues above a line against literal
computations, and as entries in a user's loop."""

import pytest
import torch

from landscape.probes import preconditioner, registry
from landscape.probes.edge import batch_sharpness, edge_eigenvalues, split_batch
from tests.probes.reference import CE, backward, batch_for, full_hessian, mlp_bn


def test_batch_sharpness_matches_a_literal_per_batch_hessian():
    model = mlp_bn()
    x, y = batch_for(model, n=24)
    batches = split_batch((x, y), 8)
    assert len(batches) == 3 and len(split_batch((x, y), 10)) == 2  # a short remainder is dropped
    r = batch_sharpness(model, CE, batches)
    literal = []
    for b in batches:
        H, g, _, _ = full_hessian(model, b)
        literal.append(float(g @ H @ g / (g @ g)))
    assert r.per_batch == pytest.approx(literal, rel=1e-9)
    assert r.value == pytest.approx(sum(literal) / 3, rel=1e-9) and r.batch_size == 8


def test_eigenvalues_above_the_line_match_eigvalsh_with_several_above_it():
    model = mlp_bn()
    batch = batch_for(model, n=32)
    H, _, _, _ = full_hessian(model, batch)
    evals = torch.linalg.eigvalsh(H).flip(0)
    line = float((evals[3] + evals[4]) / 2)  # four eigenvalues above it
    r = edge_eigenvalues(model, CE, batch, line, block=2, tol=1e-8, max_products=500)
    assert r.count == 4 and r.converged and r.block >= 8  # the block doubled twice to make room
    assert r.values == pytest.approx(evals[:4].tolist(), rel=1e-6)
    # warm start from those vectors: the same values (what it saves on a network is measured in docs/edge.md)
    again = edge_eigenvalues(model, CE, batch, line, block=2, tol=1e-8, max_products=500, start=r.vectors)
    assert again.warm and again.values == pytest.approx(r.values, rel=1e-6)
    # a line above every eigenvalue: none, but the top one is still measured
    none = edge_eigenvalues(model, CE, batch, float(evals[0]) * 2, tol=1e-8, max_products=500)
    assert none.count == 0 and none.top == pytest.approx(float(evals[0]), rel=1e-6)


def test_eigenvalues_above_handles_a_preconditioner_as_the_sharpness_probe_does():
    model = mlp_bn()
    batch = batch_for(model, n=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    backward(model, batch)
    opt.step()
    P = preconditioner(opt, model)
    H, _, names, _ = full_hessian(model, batch)
    p = torch.cat([P[n].reshape(-1) for n in names])
    top = torch.linalg.eigvalsh(H / p.sqrt()[:, None] / p.sqrt()[None, :])[-1].item()
    r = edge_eigenvalues(model, CE, batch, 0.5 * top, preconditioner=P, tol=1e-8, max_products=500)
    assert r.values[0] == pytest.approx(top, rel=1e-6)


def test_the_new_probes_as_entries_in_a_users_loop(tmp_path):
    from landscape.probes import Monitor, every
    from landscape.runs import read_metrics

    model = mlp_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = batch_for(model, n=32)
    monitor = Monitor(
        tmp_path / "run",
        model,
        opt,
        CE,
        every(2),
        probes=["update_sweep", "batch_sharpness", "edge_eigenvalues"],
        options={"batch_sharpness": {"batches": 2, "batch_size": 8}, "edge_eigenvalues": {"tol": 1e-3}},
        probe_batch=(x, y),
    )
    for step in range(1, 5):
        loss = CE(model(x), y)
        opt.zero_grad()
        loss.backward()
        monitor.observe(step, (x, y), loss)
        opt.step()
    monitor.close()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "probe"]
    assert {(r["step"], r["probe"]) for r in recs} == {
        (s, p) for s in (1, 2, 4) for p in ("update_sweep", "batch_sharpness", "edge_eigenvalues")
    }
    edge = [r["values"] for r in recs if r["probe"] == "edge_eigenvalues"]
    assert (
        edge[0]["warm"] is False and edge[1]["warm"] is True and edge[0]["line"] == pytest.approx(0.75 * 2 * 1.9 / 0.05)
    )
    bs = next(r["values"] for r in recs if r["probe"] == "batch_sharpness")
    assert len(bs["per_batch"]) == 2 and bs["threshold"] == pytest.approx(2 * 1.9 / 0.05)
    assert registry.quantity("update_sweep", recs[0]["values"], "update_beta_eff") > 0
