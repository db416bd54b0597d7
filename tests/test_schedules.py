"""Probe schedules (landscape.probes.schedules): tiny functions step -> bool."""

import pytest
from landscape.probes.schedules import build, every, log_spaced_steps, mixed


def test_the_mixed_schedule_is_the_union_of_log_spaced_and_every_n_steps():
    s = mixed(1000, 7, 100)
    steps = [t for t in range(1, 1001) if s(t)]
    assert steps == [1, 3, 10, 32, 100, 200, 300, 316, 400, 500, 600, 700, 800, 900, 1000]
    assert set(steps) == set(log_spaced_steps(1000, 7)) | {t for t in range(1, 1001) if every(100)(t)}
    assert [t for t in range(1, 50) if build("mixed", 1000, 100, 7)(t)] == [1, 3, 10, 32]
    with pytest.raises(ValueError, match="unknown schedule"):
        build("often", 10, 1, 1)
