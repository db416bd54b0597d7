"""The probe table's 0.3 home, read for one more release: its contents now live in
:mod:`landscape.probes.registry` (the table and its readers), each probe's own module (its
function, options and entry) and :mod:`landscape.probes.legacy` (0.2's settings)."""

import warnings

from landscape.probes import registry
from landscape.probes.legacy import LEGACY_OPTIONS, upgrade_legacy  # noqa: F401
from landscape.probes.registry import (  # noqa: F401
    REGISTRY,
    Context,
    Probe,
    attach_warnings,
    get,
    mean_over_layers,
    names,
    number,
    numbers,
    options_of,
    per_layer,
    quantity,
    register,
    scalars,
    unregister,
    warn_at_attach,
)
from landscape.probes.sweeps import DEFAULT_ETA_MULTIPLES  # noqa: F401

warnings.warn(
    "landscape.probes.entries is landscape 0.3's; import from landscape.probes (or landscape.probes.registry)"
    " instead: it goes in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
__all__ = [n for n in dir(registry) if not n.startswith("_")]
