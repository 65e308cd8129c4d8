"""Statistics of a sweep: ranks per scene, paired differences between arms with confidence intervals."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Better = Literal["low", "high"]


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval (None when fewer than two values)."""

    mean: float
    low: float | None
    high: float | None
    n: int


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Student-t interval of the mean: mean ± t_{(1+c)/2, n-1} x s / sqrt(n).

    Example: [1, 2, 3] -> mean 2, s = 1, t_{0.975, 2} = 4.303 -> 2 ± 2.484.
    """
    from scipy.stats import t

    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if len(x) == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, None, None, len(x))
    half = float(t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


def average_ranks(values: Mapping[str, float | None], better: Better) -> dict[str, float]:
    """Rank of each key, 1 the best; ties share the mean of their ranks; a missing value
    (None, non-finite: a failed arm) ranks after every value."""
    sign = 1.0 if better == "low" else -1.0
    keyed = {k: (sign * v if v is not None and math.isfinite(v) else math.inf) for k, v in values.items()}
    order = sorted(keyed.values())
    ranks = {}
    for k, v in keyed.items():
        first = order.index(v)
        count = order.count(v)
        ranks[k] = first + (count + 1) / 2
    return ranks


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` of one metric over matching (scene, seed) pairs, and its interval.

    With two or more scenes the unit is a scene (its mean difference over the seeds both arms
    finished) and the interval a t-interval over scenes; with one scene, over its seeds."""

    metric: str
    a: str
    b: str
    interval: Interval | None
    unit: Literal["scenes", "seeds"]
    wins_a: int
    """Units where ``a`` is better than ``b``."""


Values = Mapping[tuple[str, str, int], float | None]
"""(scene, arm, seed) -> a metric's value (None: failed or missing)."""


def paired_difference(values: Values, metric: str, a: str, b: str, better: Better,
                      confidence: float = 0.95) -> PairedDifference:
    """The paired difference ``a - b`` of ``metric`` (see ``PairedDifference``)."""
    per_scene: dict[str, list[float]] = {}
    for (scene, arm, seed), va in values.items():
        vb = values.get((scene, b, seed))
        if arm == a and _finite(va) and _finite(vb):
            per_scene.setdefault(scene, []).append(float(va) - float(vb))  # type: ignore[arg-type]
    if len(per_scene) >= 2:
        unit, diffs = "scenes", [float(np.mean(d)) for d in per_scene.values()]
    else:
        unit, diffs = "seeds", [d for ds in per_scene.values() for d in ds]
    if not diffs:
        return PairedDifference(metric, a, b, None, unit, 0)
    wins = sum((d < 0) if better == "low" else (d > 0) for d in diffs)
    return PairedDifference(metric, a, b, t_interval(diffs, confidence), unit, wins)


def arm_pairs(arms: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of arms, hash grid vs dense grid first, then in the arms' order."""
    first = ("hashgrid", "densegrid")
    pairs = [(arms[i], arms[j]) for i in range(len(arms)) for j in range(i + 1, len(arms))]
    if not set(first) <= set(arms):
        return pairs
    return [first] + [p for p in pairs if set(p) != set(first)]


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(float(v))
