"""The lr schedule keeps its shape at any length: a budget fixes train.steps, and the warm-up,
milestones and decay stay at the same fractions of training."""

from __future__ import annotations

import pytest

from wrn.train.config import OptimConfig
from wrn.train.optim import Hyper, Schedule


def schedule(kind: str, total: int | None, **kw) -> Schedule:
    cfg = OptimConfig(schedule=kind, milestones=(60, 120, 160), gamma=0.2, **kw)
    return Schedule(cfg, Hyper(0.1, 5e-4, kw.get("warmup_epochs", 0.0)), 390, 200, total_steps=total)


@pytest.mark.parametrize("total", [78000, 1000, 137])
def test_a_warm_up_fixed_in_steps_does_not_move_with_the_total(total):
    """optim.warmup_steps (what a budgeted run sets before its first step): the warm-up's lrs are
    the same whatever the total chosen later. Control: the stretched warm-up's are not."""
    fixed = [schedule("onecycle", t, warmup_epochs=1.0, warmup_steps=100) for t in (total, 2 * total)]
    assert [fixed[0](i) for i in range(100)] == [fixed[1](i) for i in range(100)]
    assert fixed[0](99) == pytest.approx(0.1) and fixed[0](101) < 0.1  # the peak, then the decay
    stretched = [schedule("onecycle", t, warmup_epochs=10.0) for t in (total, 2 * total)]
    assert stretched[0](0) != stretched[1](0)


@pytest.mark.parametrize("total", [78000, 1000, 137, 20])
def test_onecycle_ends_near_zero_at_the_last_step(total):
    s = schedule("onecycle", total, warmup_epochs=10.0)
    assert s(total - 1) <= 0.1 / (total - round(10 * total / 200)) + 1e-12
    assert s(total - 1) >= 0
    peak = max(range(total), key=s)
    assert peak / total == pytest.approx(10 / 200, abs=1.5 / total)  # warm-up: the same 5% of training
    assert s(peak) == pytest.approx(0.1)


@pytest.mark.parametrize("total", [78000, 1000, 390])
def test_step_schedule_milestones_land_at_the_same_fractions(total):
    s = schedule("step", total)
    drops = [i for i in range(1, total) if s(i) < s(i - 1)]
    assert [d / total for d in drops] == pytest.approx([60 / 200, 120 / 200, 160 / 200], abs=1 / total)
    assert s(total - 1) == pytest.approx(0.1 * 0.2 ** 3)


def test_schedule_control_without_total_steps_it_does_not_stretch():
    """Control: the recipe's own length (no total_steps) puts the drops at recipe epochs, so a
    1000-step run would never reach its first milestone."""
    s = schedule("step", None)
    assert all(s(i) == 0.1 for i in range(1000))


def test_cosine_ends_near_zero():
    s = schedule("cosine", 500)
    assert s(0) == pytest.approx(0.1) and s(499) < 1e-5
