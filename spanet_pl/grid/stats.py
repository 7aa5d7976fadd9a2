"""Seeds → numbers: n, mean ± std of the best and the final metric per cell, and each cell's difference to the
reference cell with a Welch's t confidence interval (scipy). Only finished runs count; failed ones are counted."""
import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .state import RunView

__all__ = ['Spread', 'Difference', 'CellStats', 'spread', 'welch_difference', 'cell_stats']


@dataclass
class Spread:
    n: int
    mean: Optional[float]
    std: Optional[float]  # sample standard deviation (ddof 1); None below two values

    def text(self, digits: int = 4) -> str:
        if self.mean is None:
            return ''
        return f'{self.mean:.{digits}f}' + (f' ± {self.std:.{digits}f}' if self.std is not None else '')


@dataclass
class Difference:
    """mean(cell) − mean(reference), with the ``confidence`` interval and p-value of Welch's t-test (None where the
    test is undefined: fewer than two runs on a side, or no variance on either)."""
    mean: float
    low: Optional[float]
    high: Optional[float]
    p_value: Optional[float]
    confidence: float = 0.95

    def text(self, digits: int = 4) -> str:
        if self.low is None:
            return f'{self.mean:+.{digits}f} (CI n/a)'
        return f'{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]'


@dataclass
class CellStats:
    cell: str
    n: int          # finished runs
    failed: int     # runs that ended with an error (never averaged in)
    unfinished: int  # pending, queued, running or interrupted runs
    best: Spread
    final: Spread
    difference: Optional[Difference]  # of the best metric, against the reference cell; None for the reference
    values: List[float]               # best metric of each finished run, in seed order


def spread(values: Sequence[float]) -> Spread:
    n = len(values)
    if not n:
        return Spread(0, None, None)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Spread(n, mean, std)


def welch_difference(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> Difference:
    """Difference of the means with Welch's (unequal-variance) t-test from ``scipy.stats.ttest_ind``."""
    from scipy import stats
    mean = math.fsum(values) / len(values) - math.fsum(reference) / len(reference)
    if len(values) < 2 or len(reference) < 2:
        return Difference(mean, None, None, None, confidence)
    with warnings.catch_warnings():  # identical values on both sides: scipy warns, then returns nan
        warnings.simplefilter('ignore', RuntimeWarning)
        result = stats.ttest_ind(values, reference, equal_var=False)
        interval = result.confidence_interval(confidence_level=confidence)
    low, high, p = float(interval.low), float(interval.high), float(result.pvalue)
    if not all(math.isfinite(x) for x in (low, high, p)):
        return Difference(mean, None, None, None, confidence)
    return Difference(mean, low, high, p, confidence)


def cell_stats(views: Sequence[RunView], cells: Sequence[str], reference: str,
               confidence: float = 0.95) -> Dict[str, CellStats]:
    """Statistics per cell (in ``cells`` order) over its runs' ``metrics.json``."""
    by_cell = {cell: [view for view in views if view.run.cell == cell] for cell in cells}
    best = {cell: [v.best for v in runs if v.status == 'done' and v.best is not None] for cell, runs in by_cell.items()}
    out = {}
    for cell, runs in by_cell.items():
        done = [v for v in runs if v.status == 'done']
        finals = [v.final for v in done if v.final is not None]
        difference = None
        if cell != reference and best[cell] and best.get(reference):
            difference = welch_difference(best[cell], best[reference], confidence)
        out[cell] = CellStats(cell=cell, n=len(done), failed=sum(v.status == 'failed' for v in runs),
                              unfinished=sum(v.status not in ('done', 'failed') for v in runs),
                              best=spread(best[cell]), final=spread(finals), difference=difference,
                              values=best[cell])
    return out
