"""The order an executor carries a decision out in: in place first, shrink before grow, make-before-break only
when both fit, and the cores held never past the budget when the decision and what runs now fit it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapter.executors.ordering import CoreChange, peak, phases


def test_make_before_break_when_both_fit() -> None:
    changes = [CoreChange("old", 1.0, 0.0), CoreChange("new", 0.0, 1.0)]
    plan = phases(changes, budget=2.0)
    assert [c.key for c in plan.make] == ["new"] and [c.key for c in plan.stops] == ["old"] and not plan.after
    assert peak(changes, plan) == 2.0


def test_break_before_make_when_they_do_not() -> None:
    changes = [CoreChange("old", 1.0, 0.0), CoreChange("new", 0.0, 1.0)]
    plan = phases(changes, budget=1.0)
    assert not plan.make and [c.key for c in plan.after] == ["new"]
    assert peak(changes, plan) == 1.0


def test_in_place_shrinks_go_first_and_make_room() -> None:
    # 2 × 1 core → one resized to 0.5, one stopped, a new 0.5-core one: the shrink makes room for it at once
    changes = [CoreChange("a", 1.0, 0.5), CoreChange("b", 1.0, 0.0), CoreChange("c", 0.0, 0.5)]
    plan = phases(changes, budget=2.0)
    assert [c.key for c in plan.in_place] == ["a"] and [c.key for c in plan.make] == ["c"]
    assert peak(changes, plan) == 2.0
    # all at once it would hold 1 + 1 + 0.5 = 2.5 for a while
    assert sum(max(c.before, c.after) for c in changes) == 2.5


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0]),
                          st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0])), max_size=8),
       st.sampled_from([1.0, 2.0, 3.0, 4.0, 8.0]))
def test_the_budget_holds_whenever_before_and_after_fit_it(pairs: list[tuple[float, float]], budget: float) -> None:
    changes = [CoreChange(i, b, a) for i, (b, a) in enumerate(pairs) if b > 0 or a > 0]
    held, final = sum(c.before for c in changes), sum(c.after for c in changes)
    plan = phases(changes, budget)
    assert sorted(c.key for g in plan.order() for c in g) == sorted(c.key for c in changes)  # each once
    if held <= budget and final <= budget:
        assert peak(changes, plan) <= budget + 1e-9
