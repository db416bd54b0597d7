"""The experiments: one module each, one :class:`Experiment` record each, and the registry.

An experiment says which runs it needs for a preset and a list of seeds, which claims of
the paper those runs test (declared here, before any run exists), and which figures the
report draws for it. The CLI commands, ``reproduce``, the summaries and the report all
iterate :data:`REGISTRY`; adding an experiment is adding a module that calls
:func:`register` (and importing it below).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from landscape.claims import Claim
from landscape.errors import UserError
from landscape.planning import RunSpec
from landscape.report.figures import Figure
from landscape.results import RunTable


@dataclass(frozen=True)
class Experiment:
    name: str  # the CLI command and the summary folder, e.g. "smoothness"
    title: str  # the report section's heading
    anchor: str  # the report section's HTML id
    help: str  # the CLI command's help line
    plan: Callable[[dict, list[int], list[dict]], list[RunSpec]]  # (preset, seeds, overrides) -> runs
    claims: Callable[[dict], list[Claim]]  # preset -> the claims its runs test
    figures: Callable[[RunTable], list[Figure]]  # the experiment's runs -> the report's figures
    paper: bool = True  # one of the paper's experiments (reproduce runs these); False: beyond the paper
    preset_key: str | None = None  # the preset section of its own settings (e.g. "stability"), if it has one
    about: str = ""  # the report's plain words for the section: what its figures show and what to look for
    # (preset, runs, runs folder, data dir, device, log) -> None: work on the finished runs before the claims
    # are judged (e.g. slices of the trained weights), resumable, written into the runs' own folders
    after: Callable[..., None] | None = None


REGISTRY: dict[str, Experiment] = {}
__all__ = ["Experiment", "Figure", "REGISTRY", "register", "unregister", "get"]


def register(experiment: Experiment) -> Experiment:
    REGISTRY[experiment.name] = experiment
    return experiment


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def preset_keys() -> tuple[str, ...]:
    """The preset sections the registered experiments declare."""
    return tuple(e.preset_key for e in REGISTRY.values() if e.preset_key)


def get(name: str) -> Experiment:
    if name not in REGISTRY:
        raise UserError(f"unknown experiment '{name}'; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


# The paper's figures, in the paper's order (the report's sections follow it).
# Beyond the paper's figures.
from landscape.experiments import (  # noqa: E402,F401  # noqa: E402,F401
    depth,
    dln_regimes,
    eos,
    ics_distrib,
    ics_opti,
    ioffe_mnist,
    norms,
    slices,
    smoothness,
    stability,
    theory,
    train_compare,
    transformer_norms,
    width,
)
