"""``choose_version``: which version a routing key gets, as a pure function."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.routing import choose_version

KEYS = [f"user-{i}" for i in range(10_000)]

# Routes of 1 to 5 legs with distinct version ids and weights 0..100, at least one positive.
routes = st.dictionaries(
    keys=st.integers(min_value=1, max_value=10_000),
    values=st.integers(min_value=0, max_value=100),
    min_size=1,
    max_size=5,
).filter(lambda legs: any(w > 0 for w in legs.values()))


def test_same_key_always_gets_the_same_version() -> None:
    legs = [(1, 50), (2, 50)]
    first = [choose_version(legs, key) for key in KEYS[:500]]
    again = [choose_version(legs, key) for key in KEYS[:500]]
    assert first == again
    assert set(first) == {1, 2}


def test_order_of_legs_does_not_change_the_choice() -> None:
    forward = [(3, 20), (7, 30), (9, 50)]
    backward = list(reversed(forward))
    assert all(choose_version(forward, key) == choose_version(backward, key) for key in KEYS[:1000])


def test_ninety_ten_split_lands_within_three_percent_over_10k_keys() -> None:
    counts = Counter(choose_version([(1, 90), (2, 10)], key) for key in KEYS)
    assert abs(counts[1] / len(KEYS) - 0.90) <= 0.03
    assert abs(counts[2] / len(KEYS) - 0.10) <= 0.03


def test_raising_a_canary_only_moves_keys_onto_the_canary() -> None:
    small = {key: choose_version([(1, 95), (2, 5)], key) for key in KEYS}
    large = {key: choose_version([(1, 80), (2, 20)], key) for key in KEYS}
    assert all(large[key] == 2 for key in KEYS if small[key] == 2)


@given(legs=routes, key=st.text(max_size=64))
def test_choice_is_always_a_leg_with_positive_weight(legs: dict[int, int], key: str) -> None:
    chosen = choose_version(list(legs.items()), key)
    assert legs.get(chosen, 0) > 0


def test_zero_weight_leg_is_never_chosen() -> None:
    legs = [(1, 0), (2, 100), (3, 0)]
    assert {choose_version(legs, key) for key in KEYS} == {2}


@pytest.mark.parametrize("legs", [[], [(1, 0)], [(1, 0), (2, 0)]], ids=["empty", "one-zero", "all-zero"])
def test_route_without_positive_weight_raises(legs: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError, match="positive weight"):
        choose_version(legs, "user-1")


def test_the_shadow_fraction_is_honoured_and_stable_per_job() -> None:
    from registry.routing import in_shadow

    ids = [f"job-{i}" for i in range(10_000)]
    share = sum(in_shadow(i, 0.05) for i in ids) / len(ids)
    assert abs(share - 0.05) <= 0.01, share
    assert [in_shadow(i, 0.05) for i in ids[:100]] == [in_shadow(i, 0.05) for i in ids[:100]]
    assert not any(in_shadow(i, 0.0) for i in ids[:100]) and all(in_shadow(i, 1.0) for i in ids[:100])
