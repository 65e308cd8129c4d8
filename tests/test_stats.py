"""Ranks and paired differences of a sweep, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from recon.stats import arm_pairs, average_ranks, paired_difference, t_interval


def test_t_interval_by_hand() -> None:
    iv = t_interval([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.3027
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.low == pytest.approx(2 - 4.302653 / math.sqrt(3)) and iv.high == pytest.approx(2 + 4.302653 / math.sqrt(3))
    one = t_interval([5.0])
    assert (one.mean, one.low, one.high, one.n) == (5.0, None, None, 1)


def test_average_ranks_ties_and_failures() -> None:
    assert average_ranks({"a": 0.3, "b": 0.1, "c": 0.2}, "low") == {"a": 3, "b": 1, "c": 2}
    assert average_ranks({"a": 0.3, "b": 0.1, "c": 0.2}, "high") == {"a": 1, "b": 3, "c": 2}
    assert average_ranks({"a": 1.0, "b": 1.0, "c": 2.0}, "low") == {"a": 1.5, "b": 1.5, "c": 3}
    assert average_ranks({"a": None, "b": float("inf"), "c": 2.0}, "high") == {"a": 2.5, "b": 2.5, "c": 1}


def test_paired_difference_over_scenes_then_seeds() -> None:
    values = {("s1", "h", 0): 1.0, ("s1", "d", 0): 3.0, ("s1", "h", 1): 2.0, ("s1", "d", 1): 2.0,
              ("s2", "h", 0): 1.0, ("s2", "d", 0): 2.0, ("s2", "h", 1): 5.0, ("s2", "d", 1): None,
              ("s3", "h", 0): 4.0, ("s3", "d", 0): 2.0}
    d = paired_difference(values, "chamfer", "h", "d", "low")
    # per scene: s1 mean(-2, 0) = -1; s2 only seed 0 (seed 1 failed for d): -1; s3: +2
    assert d.unit == "scenes" and d.interval.n == 3 and d.interval.mean == pytest.approx(0.0)
    assert d.interval.high - d.interval.mean == pytest.approx(4.302653 * math.sqrt(3) / math.sqrt(3))
    assert d.wins_a == 2
    one = {k: v for k, v in values.items() if k[0] == "s1"}
    d = paired_difference(one, "chamfer", "h", "d", "low")
    assert d.unit == "seeds" and d.interval.n == 2 and d.interval.mean == -1.0 and d.wins_a == 1
    none = paired_difference({("s1", "h", 0): 1.0, ("s1", "d", 0): None}, "chamfer", "h", "d", "low")
    assert none.interval is None and none.wins_a == 0


def test_hash_grid_vs_dense_grid_comes_first() -> None:
    assert arm_pairs(["mlp", "densegrid", "hashgrid"]) == [("hashgrid", "densegrid"), ("mlp", "densegrid"),
                                                            ("mlp", "hashgrid")]
    assert arm_pairs(["mlp", "sdfgrid"]) == [("mlp", "sdfgrid")]
    assert arm_pairs(["hashgrid", "densegrid", "mlp"])[0] == ("hashgrid", "densegrid")
