"""Lethean's credit rules (lthn/credit_rules.py): pure integers, checked exhaustively."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lthn import credit_rules as cr
from lthn.credit_rules import Rules

costs = st.integers(min_value=1, max_value=10**13)       # atomic units per minute
rules_st = st.builds(Rules, cost=costs, first_minutes=st.integers(0, 600),
                     first_confirmations=st.integers(0, 20),
                     next_minutes=st.integers(0, 600), next_confirmations=st.integers(0, 20))


def rules(cost: int = 1000, first: int = 10, first_conf: int = 0, nxt: int = 5,
          next_conf: int = 2) -> Rules:
    return Rules(cost=cost, first_minutes=first, first_confirmations=first_conf,
                 next_minutes=nxt, next_confirmations=next_conf)


@given(rules_st, st.integers(0, 10**9), st.lists(st.integers(0, 120_000), max_size=200))
def test_many_small_ticks_cost_what_one_big_tick_costs(r, already, ticks):
    charged, total = already, 0
    for tick in ticks:
        total += cr.charge_for(r, charged, tick)
        charged += tick
    assert total == cr.charge_for(r, already, sum(ticks))


@given(rules_st, st.integers(0, 10**9), st.integers(-10**6, 10**7))
def test_a_charge_is_never_negative_nor_more_than_the_exact_price_rounded_up(r, already, ms):
    amount = cr.charge_for(r, already, ms)
    assert amount >= 0
    if ms <= 0:
        assert amount == 0
    else:
        exact = r.cost * ms / cr.MS_PER_MINUTE
        assert exact - 1 < amount < exact + 1


@given(costs, st.integers(1, 10_000))
def test_whole_minutes_cost_exactly_cost_per_minute(cost, minutes):
    assert cr.charge_for(rules(cost=cost), 0, minutes * cr.MS_PER_MINUTE) == cost * minutes


def test_a_millisecond_at_a_time_adds_up_to_the_minute():
    r = rules(cost=7)   # 7 units a minute: most milliseconds cost nothing, remainder carried
    assert sum(cr.charge_for(r, ms, 1) for ms in range(cr.MS_PER_MINUTE)) == 7


def test_first_and_later_payments_need_their_own_confirmations():
    r = rules(first_conf=1, next_conf=3)
    assert cr.confirmations_needed(r, 1) == 1
    assert cr.confirmations_needed(r, 2) == 3
    assert not cr.is_spendable(r, 1, 0) and cr.is_spendable(r, 1, 1)
    assert not cr.is_spendable(r, 2, 2) and cr.is_spendable(r, 2, 3)


def test_activation_needs_the_prepaid_minutes_of_its_turn():
    r = rules(cost=1000, first=10, nxt=5)
    assert cr.prepaid_needed(r, 0) == 10_000
    assert cr.prepaid_needed(r, 3) == 5_000
    assert not cr.may_activate(r, 0, 9_999) and cr.may_activate(r, 0, 10_000)
    assert not cr.may_activate(r, 1, 4_999) and cr.may_activate(r, 1, 5_000)


@given(rules_st, st.integers(0, 5))
def test_activation_never_needs_less_than_one_unit(r, activations):
    assert cr.prepaid_needed(r, activations) >= 1
    assert not cr.may_activate(r, activations, 0)


def test_deactivation_when_the_next_second_cannot_be_paid():
    r = rules(cost=600)            # 10 units a second
    assert cr.must_deactivate(r, 0) and cr.must_deactivate(r, -5)
    assert cr.must_deactivate(r, 9)
    assert not cr.must_deactivate(r, 10)


@given(rules_st, st.integers(-10**12, 10**15))
def test_minutes_left_is_what_the_balance_buys(r, balance):
    left = cr.minutes_left(r, balance)
    assert left >= 0
    if balance > 0:
        assert left * r.cost <= balance < (left + 1) * r.cost
