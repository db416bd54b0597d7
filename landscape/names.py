"""Names shared by planning, results and the report: the network kinds as the paper names them."""

from __future__ import annotations

# Network kinds, in the paper's order (the report's sections and legends follow it), and the
# model.norm each one uses.
NETS = {
    "standard": "none",
    "bn": "batch",
    "noisy_bn": "noisy_batch",
    "l1": "l1",
    "l2": "l2",
    "linf": "linf",
    "ln": "layer",
    "rms": "rms",
    "dyt": "dyt",
}
NET_LABELS = {
    "standard": "standard",
    "bn": "BatchNorm",
    "noisy_bn": "noisy BN",
    "l1": "l1 norm",
    "l2": "l2 norm",
    "linf": "l_inf norm",
    "ln": "LayerNorm",
    "rms": "RMSNorm",
    "dyt": "Dynamic Tanh",
}


def label_of(net: str) -> str:
    """A network kind as figures and notes name it (other names as they are)."""
    return NET_LABELS.get(net, net)
