"""Monitor (landscape.probes.monitor) in a user's own loop: the after-step hook, the run directory, the README
example."""

import pytest
import torch
from torch import nn

from landscape.probes import (
    Monitor,
    every,
    explicit,
    gradient_sweep,
    ics_opti,
)
from landscape.runs import read_metrics
from tests.probes.reference import CE, batch_for, mlp_bn


def test_ics_matches_a_fresh_computation_when_the_optimizer_hook_finishes_it(tmp_path):
    """Monitor: ics_opti measured through the optimizer's post-step hook equals a direct call."""
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    records = []
    mon = Monitor(records.append, model, opt, CE, explicit([2]), probes=["ics_opti", "gradient_sweep"])
    for step in (1, 2):
        mon.before_forward(step)
        w_t = {n: p.detach().clone() for n, p in model.named_parameters()}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        loss = CE(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        mon.observe(step, batch, loss)
        opt.step()
    mon.close()
    (sweep,) = [r for r in records if r["probe"] == "gradient_sweep"]
    (ics,) = [r for r in records if r["probe"] == "ics_opti"]
    assert sweep["step"] == ics["step"] == 2 and sweep["cost"]["backward"] == 8  # reused the step's gradient
    direct = ics_opti(
        model, CE, batch, {n: p.detach() for n, p in model.named_parameters()}, params=w_t, buffers=buffers
    )
    for layer in direct.layers:
        assert ics["values"]["l2"][layer] == pytest.approx(direct.l2[layer], rel=1e-10, abs=1e-15)
    fresh = gradient_sweep(
        model, CE, batch, [m * 0.1 for m in mon.options["gradient_sweep"].etas], params=w_t, buffers=buffers
    )
    assert sweep["values"]["losses"] == pytest.approx(fresh.losses, rel=1e-10)
    assert sweep["values"]["beta_eff"] == pytest.approx(fresh.beta_eff, rel=1e-10)


def test_monitor_in_a_users_own_loop_writes_a_run_directory(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.fc = nn.Linear(512, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with Monitor(
        tmp_path / "resnet",
        model,
        opt,
        CE,
        every(2),
        probes=["gradient_sweep", "ics_opti", "sharpness"],
        options={"gradient_sweep": {"etas": (1.0, 4.0)}, "sharpness": {"iters": 3}},
        layers=["conv1", "layer1", "layer4", "fc"],
    ) as monitor:
        for step in range(1, 4):
            loss = CE(model(x), y)
            opt.zero_grad()
            loss.backward()
            monitor.observe(step, (x, y), loss)
            opt.step()
            monitor.log_train(step, loss=loss.item())
    recs = read_metrics(tmp_path / "resnet" / "metrics.jsonl")
    probes = [(r["step"], r["probe"]) for r in recs if r["kind"] == "probe"]
    assert probes == [
        (1, "gradient_sweep"),
        (1, "sharpness"),
        (1, "ics_opti"),
        (2, "gradient_sweep"),
        (2, "sharpness"),
        (2, "ics_opti"),
    ]
    ics = [r for r in recs if r.get("probe") == "ics_opti"][0]
    assert ics["values"]["layers"] == ["conv1", "layer1", "layer4", "fc"]
    sharp = [r for r in recs if r.get("probe") == "sharpness"][0]
    assert sharp["values"]["threshold"] == pytest.approx(2 * 1.9 / 0.01)
    assert all(r["cost"]["seconds"] > 0 for r in recs if r["kind"] == "probe")
    assert (tmp_path / "resnet" / "status.json").exists() and (tmp_path / "resnet" / "monitor.yaml").exists()
    with pytest.raises(Exception, match="already exists"):
        Monitor(tmp_path / "resnet", model, opt, CE)


@pytest.mark.slow
def test_the_readme_monitor_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python example, executed verbatim (in a temporary directory), twice: force=True re-runs it."""
    from tests.conftest import doc_block

    code, page = doc_block("import torch, torchvision\nfrom landscape.probes import Monitor")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, page, "exec"), {})
    exec(compile(code, page, "exec"), {})
    recs = read_metrics(tmp_path / "runs" / "resnet18" / "metrics.jsonl")
    assert {r["probe"] for r in recs if r["kind"] == "probe"} == {"gradient_sweep", "ics_opti", "sharpness"}
    assert [r["step"] for r in recs if r.get("probe") == "sharpness"] == [1, 10, 20]
