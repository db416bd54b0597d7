"""Probe schedules (landscape.probes.schedules)."""

import numpy as np
import pytest

from landscape.probes import (
    every,
    explicit,
    log_spaced,
)
from landscape.probes.schedules import build, log_spaced_steps, mixed


def test_schedules():
    s = every(10)
    assert [t for t in range(1, 31) if s(t)] == [1, 10, 20, 30]
    assert [t for t in range(1, 100) if explicit([3, 50])(t)] == [3, 50]
    chosen = [t for t in range(1, 1001) if log_spaced(1000, 10)(t)]
    assert chosen[0] == 1 and chosen[-1] == 1000 and len(chosen) == 10
    assert np.all(np.diff(np.log(chosen)) > 0.5)


def test_the_mixed_schedule_is_the_union_of_log_spaced_and_every_n_steps():
    s = mixed(1000, 7, 100)
    steps = [t for t in range(1, 1001) if s(t)]
    assert steps == [1, 3, 10, 32, 100, 200, 300, 316, 400, 500, 600, 700, 800, 900, 1000]
    assert set(steps) == set(log_spaced_steps(1000, 7)) | {t for t in range(1, 1001) if every(100)(t)}
    assert [t for t in range(1, 50) if build("mixed", 1000, 100, 7)(t)] == [1, 3, 10, 32]
    with pytest.raises(ValueError, match="unknown schedule"):
        build("often", 10, 1, 1)
