"""How sure an accuracy is: measured on n images, a model's accuracy is a binomial proportion.

- `wilson`: its 95% confidence interval (Wilson's score interval, which stays inside [0, 1] and
  keeps its coverage near 0 and 1, unlike the normal approximation);
- `mcnemar`: whether two models evaluated on the same images differ: only the images that one got
  right and the other wrong count, and under "no difference" each such image is a fair coin (the exact
  McNemar test, a two-sided binomial test at 1/2 on the discordant images). Paired, it sees a
  difference that two separate intervals would hide, and none where two models agree image by image;
- `rank_correlation`: Spearman's rho (ties get their mean rank).
Pure Python; the tests check them against scipy on random cases.
"""
from __future__ import annotations

import math
import statistics

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
TIED_P = 0.05  # a paired difference with p at or above this cannot be told from chance


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of correct / n (NaNs for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_tail(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), in exact integers (n in the tens of thousands is fast)."""
    term, total = 1, 1  # C(n, 0)
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        total += term
    return total / 2 ** n


def mcnemar(only_first: int, only_second: int) -> float:
    """Two-sided exact p-value that two models differ, from the images only the first got right and
    those only the second got right (1.0 when there are none)."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    return min(1.0, 2 * binomial_tail(min(only_first, only_second), n))


def paired(first: list[bool], second: list[bool]) -> dict:
    """The exact McNemar test of two models' per-image correctness on the same images."""
    if len(first) != len(second):
        raise ValueError(f"paired comparison of {len(first)} and {len(second)} images")
    only_first = sum(a and not b for a, b in zip(first, second))
    only_second = sum(b and not a for a, b in zip(first, second))
    p = mcnemar(only_first, only_second)
    return {"only_first": only_first, "only_second": only_second, "p": p, "tied": p >= TIED_P}


def ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho; None for fewer than 3 points or a constant series."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    if len(set(rx)) == 1 or len(set(ry)) == 1:
        return None
    return statistics.correlation(rx, ry)


def difference_margin(p: float, n: int, z: float = Z95) -> float:
    """Half-width of the 95% interval of a difference between two accuracies near p, each measured
    on its own n images (unpaired): below it, a difference is within the noise of the images."""
    return z * math.sqrt(2 * p * (1 - p) / n) if n > 0 else math.nan
