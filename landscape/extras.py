"""Optional extras: import one, or end in one line naming the extra that installs it."""

from __future__ import annotations

import importlib

DISTRIBUTION = "bn-landscape"  # the name on the package index (the import name is landscape)
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "lightning": "lightning", "transformers": "hf", "ray": "ray"}


def require(module: str, what: str):
    """Import an optional dependency, or raise a UserError naming the extra that installs it."""
    from landscape.errors import UserError

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise UserError(f"{what} needs the '{extra}' extra: pip install '{DISTRIBUTION}[{extra}]'") from None
