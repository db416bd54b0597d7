"""Slow, literal implementations and tiny float64 models the probe tests hold every probe against."""

import copy
import math

import torch
from torch import nn

from landscape.probes import (
    activation_stats,
    curvature,
    gradient_sweep,
    hessian_trace,
    ics_opti,
    layer_sharpness,
    preconditioner,
    sharpness,
    spectral_density,
)

F64 = torch.float64


def mlp_bn(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(6, 3))
    return nn.Sequential(*layers).to(F64).train()


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Conv2d(3, 2, 3),
            nn.Flatten(),
            nn.Linear(2 * 4 * 4, 3),
        )
        .to(F64)
        .train()
    )


def batch_for(model, seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    conv = isinstance(model[0], nn.Conv2d)
    x = torch.randn(n, 2, 6, 6, generator=g, dtype=F64) if conv else torch.randn(n, 5, generator=g, dtype=F64)
    return x, torch.randint(0, 3, (n,), generator=g)


CE = nn.functional.cross_entropy


MODELS = {"mlp_bn": mlp_bn, "cnn": small_cnn}


def literal_loss_and_grad(model, batch, weights=None):
    """The obvious way: a copy of the model, weights written in, autograd .backward()."""
    m = copy.deepcopy(model)
    if weights is not None:
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.copy_(weights[n])
    m.zero_grad()
    loss = CE(m(batch[0]), batch[1])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}


def flat(d):
    return torch.cat([v.reshape(-1) for v in d.values()])


class Quadratic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return self.w


def full_hessian(model, batch, loss_fn=None):
    """The Hessian of the batch loss (``loss_fn``, cross-entropy by default) in every parameter, by autograd on a
    flat vector (the slow, obvious way); also the gradient, the parameter names and shapes."""
    loss_fn = loss_fn or CE
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of_flat(v):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = v[i : i + k].view(s)
            i += k
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return loss_fn(torch.func.functional_call(model, (params, buffers), (batch[0],)), batch[1])

    w = w0.clone().requires_grad_()
    g = torch.autograd.grad(loss_of_flat(w), w)[0]
    return torch.autograd.functional.hessian(loss_of_flat, w0), g.detach(), names, shapes


def full_state(model, opt):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "opt": copy.deepcopy(opt.state_dict()),
        "rng": torch.get_rng_state().clone(),
        "training": [m.training for m in model.modules()],
    }


def assert_same(a, b):
    for key in ("params", "grads", "buffers"):
        for n in a[key]:
            assert (a[key][n] is None and b[key][n] is None) or torch.equal(a[key][n], b[key][n]), (key, n)
    assert torch.equal(a["rng"], b["rng"]) and a["training"] == b["training"]
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for field in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][field]), torch.as_tensor(sb[k][field]))


PROBE_CALLS = {
    "gradient_sweep": lambda m, b, o: gradient_sweep(m, CE, b, [0.1, 0.5]),
    "gradient_sweep_eval": lambda m, b, o: gradient_sweep(m, CE, b, [0.1], eval_mode=True),
    "sharpness": lambda m, b, o: sharpness(m, CE, b, iters=5),
    "ics_opti": lambda m, b, o: ics_opti(m, CE, b, {n: p.detach() * 1.01 for n, p in m.named_parameters()}),
    "activation_stats": lambda m, b, o: activation_stats(m, b),
}


class KwargsTupleNet(nn.Module):
    """forward takes keyword arguments and returns a tuple (logits, aux)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x, *, scale=1.0):
        h = self.norm(self.embed(x) * scale)
        return self.head(h), h


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


ANY_MODELS = {
    "batchnorm_train": (lambda: mlp_bn(), lambda: batch_for(mlp_bn())),
    "dropout": (lambda: mlp_bn(dropout=0.2), lambda: batch_for(mlp_bn())),
    "layernorm_kwargs_tuple": (
        lambda: KwargsTupleNet().to(F64),
        lambda: ({"x": torch.randn(8, 5, dtype=F64), "scale": 2.0}, torch.randint(0, 3, (8,))),
    ),
    "transformer": (
        lambda: TinyTransformer().to(F64).train(),
        lambda: (torch.randn(4, 6, 4, dtype=F64), torch.randint(0, 3, (4,))),
    ),
}


def offsets(names, shapes):
    out, i = {}, 0
    for n, s in zip(names, shapes):
        out[n] = (i, i + math.prod(s))
        i += math.prod(s)
    return out


CURVATURE_CALLS = {
    "preconditioned sharpness": lambda m, b, o: sharpness(m, CE, b, iters=5, preconditioner=preconditioner(o, m)),
    "curvature": lambda m, b, o: curvature(m, CE, b),
    "layer_sharpness": lambda m, b, o: layer_sharpness(m, CE, b, iters=4),
    "hessian_trace": lambda m, b, o: hessian_trace(m, CE, b, samples=6, method="hutch++"),
    "spectral_density": lambda m, b, o: spectral_density(m, CE, b, vectors=2, steps=4),
}


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True),
    "sgd_maximize": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.5, maximize=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_l2_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.95)),
}


def backward(model, batch):
    """The step's own gradient into .grad, as a training loop leaves it before optimizer.step()."""
    model.zero_grad()
    CE(model(batch[0]), batch[1]).backward()
