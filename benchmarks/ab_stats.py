"""Statistics of interleaved A/B timings (ab_stack.py: stack variants in one process; ab_train.py:
training-step arms, one process each): per-round ratios to a baseline, a 95 % t-interval of their
mean and a distribution-free 95 % interval of their median."""

from __future__ import annotations

import math
import statistics

# two-sided 95 % Student t quantiles by degrees of freedom, 1–30 (up to now only 1–10, and 2.0 beyond:
# at the default 16 rounds, df 15, the quantile is 2.131, so every interval was 6 % too narrow; 12 %
# at 12 rounds). Beyond 30: the Cornish-Fisher expansion of t in z (within 0.001 of the exact value).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
        29: 2.045, 30: 2.042}


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom."""
    if df in _T95:
        return _T95[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def interval(values: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the median and the 95 % t-interval of the mean of ``values``."""
    med = statistics.median(values)
    if len(values) < 2:
        return med, float("nan"), float("nan")
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = t95(len(values) - 1) * sd / len(values) ** 0.5
    return med, mean - half, mean + half


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: the k-th smallest and k-th largest value, with k the
    largest order whose coverage (exact binomial, p = 1/2) is still >= ``level``. Unlike the t-interval
    it is not widened by a few slow rounds (power-capped clocks: run 33's residual read 45.6–50.3 ms
    over rounds at C = 2048)."""
    v, n = sorted(values), len(values)
    k, tail = 1, 0.5**n  # tail = P(Bin(n, 1/2) <= k - 1)
    while True:
        nxt = tail + math.comb(n, k) * 0.5**n
        if k + 1 > (n + 1) // 2 or 1 - 2 * nxt < level:
            break
        k, tail = k + 1, nxt
    if 1 - 2 * tail < level:  # too few values for this level at all
        return float("nan"), float("nan")
    return v[k - 1], v[n - k]


def summarize(ms: dict[str, list[float]], base: str) -> dict:
    out = {}
    for kind, times in ms.items():
        ratios = [t / b for t, b in zip(times, ms[base])]
        med, lo, hi = interval(ratios)
        out[kind] = dict(ms_median=statistics.median(times), ratio_median=med, ratio_ci95=[lo, hi],
                         ratio_median_ci95=list(median_interval(ratios)),
                         ms_min=min(times), ratio_of_min=min(times) / min(ms[base]))
    return out
