"""What the probes read off an optimizer (landscape.probes.optimizer): thresholds by hand, the next update
equals the step it then takes, and an optimizer it cannot read said once."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape.probes import (
    Monitor,
    UnreadableOptimizer,
    preconditioner,
    registry,
    stability_threshold,
)
from landscape.probes.optimizer import update_direction
from tests.probes.reference import CE, OPTIMIZERS, backward, batch_for, mlp_bn


def test_stability_thresholds_by_hand():
    w = [nn.Parameter(torch.zeros(2))]
    assert stability_threshold(torch.optim.SGD(w, lr=0.1)) == pytest.approx(20.0)
    assert stability_threshold(torch.optim.SGD(w, lr=0.1, momentum=0.9)) == pytest.approx(38.0)
    # Nesterov: eigenvalues of [[1 - a(1+mu), -lr mu^2], [lambda, mu]] reach -1 at a = (2 + 2mu)/(1 + 2mu)
    mu, lr = 0.9, 0.1
    nesterov = stability_threshold(torch.optim.SGD(w, lr=lr, momentum=mu, nesterov=True))
    lam = nesterov
    M = np.array([[1 - lr * lam * (1 + mu), -lr * mu**2], [lam, mu]])
    assert np.abs(np.linalg.eigvals(M)).max() == pytest.approx(1.0, rel=1e-9)
    assert stability_threshold(torch.optim.Adam(w, lr=1e-3)) == pytest.approx(38.0 / 1e-3)
    assert stability_threshold(torch.optim.AdamW(w, lr=1e-3, betas=(0.8, 0.999))) == pytest.approx(3.6 / 0.2 / 1e-3)
    with pytest.raises(UnreadableOptimizer, match="RMSprop"):
        stability_threshold(torch.optim.RMSprop(w, lr=1e-3))
    with pytest.raises(UnreadableOptimizer, match="before its first step"):
        preconditioner(torch.optim.Adam(w, lr=1e-3), nn.Linear(1, 2))
    assert preconditioner(torch.optim.SGD(w, lr=0.1), nn.Linear(1, 2)) is None


def test_an_optimizer_it_cannot_read_is_said_once_at_attach_time():
    model = mlp_bn()
    with pytest.warns(UserWarning, match="not of RMSprop") as seen:
        Monitor(lambda r: None, model, torch.optim.RMSprop(model.parameters()), CE, probes=["sharpness"])
    assert len(seen) == 1 and "\n" not in str(seen[0].message)


@pytest.mark.parametrize("steps_before", [0, 2])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_update_direction_is_the_step_the_optimizer_then_takes(name, steps_before):
    """Read before the step, compared with a copy of the optimizer stepped for real (from an empty
    state and after two steps, so momentum buffers and Adam's moments are in play)."""
    model = mlp_bn()
    opt = OPTIMIZERS[name](model.parameters())
    for s in range(steps_before):
        backward(model, batch_for(model, seed=10 + s))
        opt.step()
    backward(model, batch_for(model, seed=3))
    u = update_direction(opt, model)
    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS[name](twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    before = {n: p.detach().clone() for n, p in twin.named_parameters()}
    twin_opt.step()
    for n, p in twin.named_parameters():
        assert torch.allclose(u[n], p.detach() - before[n], rtol=1e-10, atol=1e-14), n
    # pure: the optimizer's state and the model are as they were
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_an_unknown_optimizer_is_named_once_and_the_other_probes_run():
    model = mlp_bn()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    msgs = registry.attach_warnings(["update_sweep", "gradient_sweep", "edge_eigenvalues"], opt, {})
    assert (
        len(msgs) == 2
        and msgs[0].startswith("update_sweep: landscape reads the update of SGD, Adam and AdamW, not of RMSprop")
        and msgs[1].startswith("edge_eigenvalues:")
    )
