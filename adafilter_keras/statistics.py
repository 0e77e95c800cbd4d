"""Paired statistics over seeds: the one place where the library compares two methods.

`adafilter-keras compare`, the quick start (`adafilter-keras demo`) and the transfer benchmark
all pair a method's run with the baseline's run of the same seed (same training images, order
and head initialisation) and report, per cell, the mean paired difference, its 95% interval
(Student's t) and the worst seed's difference.
"""

import math
import statistics
from typing import NamedTuple


class Paired(NamedTuple):
    """Paired differences of one cell, in the unit of the differences (points).

    Attributes:
        mean: Mean of the differences.
        interval: Half-width of the 95% interval of the mean (Student's t); NaN for one seed.
        worst: The smallest difference (the seed where the method fared worst).
        worst_seed: The seed of `worst` (None when the differences were given without seeds).
        seeds: How many differences.
    """

    mean: float
    interval: float
    worst: float
    worst_seed: object
    seeds: int


def t_quantile(count):
    """The two-sided 95% quantile of Student's t with `count - 1` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, count - 1))


def mean_interval(differences):
    """Mean and 95% half-width (Student's t) of paired differences; half-width NaN for n < 2."""
    differences = list(differences)
    if not differences:
        raise ValueError("Paired statistics need at least one difference. Received: []")
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, math.nan
    half = t_quantile(len(differences)) * statistics.stdev(differences)
    return mean, half / math.sqrt(len(differences))


def paired(values, base):
    """Pairs `values` with `base` by seed: `values[seed] - base[seed]` over the shared seeds.

    Args:
        values: `{seed: value}` of the method.
        base: `{seed: value}` of the baseline.

    Returns:
        A `Paired`, or None when no seed is in both.
    """
    seeds = sorted(set(values) & set(base), key=str)
    if not seeds:
        return None
    differences = {seed: values[seed] - base[seed] for seed in seeds}
    mean, interval = mean_interval(differences.values())
    worst_seed = min(seeds, key=lambda seed: differences[seed])
    return Paired(mean, interval, differences[worst_seed], worst_seed, len(seeds))


def mean_std(values):
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def overall(rows):
    """The mean over cells of the mean differences, with a 95% half-width.

    Cells are independent: the half-width is the square root of the summed squared half-widths
    over the number of cells.

    Args:
        rows: Dicts with `difference` and `interval` (NaN where a cell has no pair or one seed).

    Returns:
        `(mean, half_width)`; NaN where no cell is paired, half-width NaN where a cell has one
        seed.
    """
    usable = [row for row in rows if not math.isnan(row["difference"])]
    if not usable:
        return math.nan, math.nan
    mean = statistics.fmean(row["difference"] for row in usable)
    if any(math.isnan(row["interval"]) for row in usable):
        return mean, math.nan
    return mean, math.sqrt(sum(row["interval"] ** 2 for row in usable)) / len(usable)


def cell_summary(values, base):
    """The row fields every comparison table shares, for one cell.

    Args:
        values: `{seed: accuracy in %}` of the method.
        base: `{seed: accuracy in %}` of the baseline (empty when it was not run).

    Returns:
        A dict: `seeds`, `accuracy` (mean %), `std`, `difference` (mean paired difference),
        `interval` (95% half-width), `worst` (the worst seed's difference) and `worst_seed`;
        the last four NaN/None where no seed is paired.
    """
    accuracy, std = mean_std(values.values())
    row = {
        "seeds": len(values),
        "accuracy": accuracy,
        "std": std,
        "difference": math.nan,
        "interval": math.nan,
        "worst": math.nan,
        "worst_seed": None,
    }
    pair = paired(values, base)
    if pair is not None:
        row.update(
            difference=pair.mean,
            interval=pair.interval,
            worst=pair.worst,
            worst_seed=pair.worst_seed,
        )
    return row


def format_difference(row, digits=1):
    """`+d ± i, worst w` for a row of `cell_summary` (parts that are NaN left out)."""
    if math.isnan(row["difference"]):
        return "—"
    text = f"{row['difference']:+.{digits}f}"
    if not math.isnan(row["interval"]):
        text += f" ± {row['interval']:.{digits}f}"
    if not math.isnan(row["interval"]) and not math.isnan(row.get("worst", math.nan)):
        text += f", worst {row['worst']:+.{digits}f}"
    return text
