"""The paired statistics shared by `compare`, the quick start and the benchmark, on hand-computed
numbers."""

import math

import pytest
from support import tensorflow_only

from adafilter_keras import statistics

pytestmark = tensorflow_only  # plain Python; run once

T_2 = 12.706204736174694  # Student's t, 97.5% quantile, 1 degree of freedom
T_3 = 4.302652729749462  # 2 degrees of freedom
T_5 = 2.7764451051977934  # 4 degrees of freedom


def test_t_quantiles_are_students():
    assert statistics.t_quantile(2) == pytest.approx(T_2, rel=1e-12)
    assert statistics.t_quantile(3) == pytest.approx(T_3, rel=1e-9)
    assert statistics.t_quantile(5) == pytest.approx(T_5, rel=1e-12)


def test_mean_interval_of_hand_computed_differences():
    # 1, 2, 3: mean 2, sample sd 1, half-width t(2) * 1 / sqrt(3).
    mean, half = statistics.mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(T_3 / math.sqrt(3), rel=1e-9)
    # 4, -2, 0, 6, 2: mean 2, squared deviations 4+16+4+16+0 = 40, sd sqrt(10).
    mean, half = statistics.mean_interval([4.0, -2.0, 0.0, 6.0, 2.0])
    assert mean == 2.0 and half == pytest.approx(T_5 * math.sqrt(10) / math.sqrt(5), rel=1e-12)
    mean, half = statistics.mean_interval([1.5])
    assert mean == 1.5 and math.isnan(half)
    with pytest.raises(ValueError, match=r"at least one difference. Received: \[\]"):
        statistics.mean_interval([])


def test_paired_pairs_by_seed_and_names_the_worst_seed():
    method = {0: 70.0, 1: 64.0, 2: 81.0, 7: 99.0}  # seed 7 has no baseline run: left out
    base = {0: 68.0, 1: 66.0, 2: 75.0, 5: 10.0}
    pair = statistics.paired(method, base)
    # Differences +2, -2, +6: mean 2, sd 4, half-width t(2) * 4 / sqrt(3).
    assert pair == statistics.Paired(2.0, pytest.approx(T_3 * 4 / math.sqrt(3)), -2.0, 1, 3)
    assert statistics.paired({0: 1.0}, {1: 1.0}) is None


def test_cell_summary_and_its_text():
    row = statistics.cell_summary({0: 80.0, 1: 84.0}, {0: 79.0, 1: 80.0})
    # Differences +1, +4: mean 2.5, sd 3 / sqrt(2), half-width t(1) * 1.5.
    assert row["seeds"] == 2 and row["accuracy"] == 82.0
    assert row["std"] == pytest.approx(math.sqrt(8))
    assert row["difference"] == 2.5 and row["interval"] == pytest.approx(T_2 * 1.5)
    assert (row["worst"], row["worst_seed"]) == (1.0, 0)
    assert statistics.format_difference(row) == "+2.5 ± 19.1, worst +1.0"
    assert statistics.format_difference(row, digits=2) == "+2.50 ± 19.06, worst +1.00"
    alone = statistics.cell_summary({0: 80.0}, {0: 82.0})
    assert alone["std"] == 0.0 and statistics.format_difference(alone) == "-2.0"
    unpaired = statistics.cell_summary({0: 80.0}, {})
    assert math.isnan(unpaired["difference"]) and unpaired["worst_seed"] is None
    assert statistics.format_difference(unpaired) == "—"


def test_overall_adds_independent_cells_intervals_in_quadrature():
    rows = [{"difference": 1.0, "interval": 3.0}, {"difference": 3.0, "interval": 4.0}]
    assert statistics.overall(rows) == (2.0, 2.5)  # sqrt(9 + 16) / 2
    nan = math.nan
    mean, half = statistics.overall(rows + [{"difference": 5.0, "interval": nan}])
    assert mean == 3.0 and math.isnan(half)
    assert all(math.isnan(v) for v in statistics.overall([{"difference": nan, "interval": nan}]))
