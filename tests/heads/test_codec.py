"""MixedRadix: round trips, validity, the waste rule, balanced sizes, contiguous groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xlc.errors import ConfigError, DataError
from xlc.heads.codec import MixedRadix, contiguous_groups

FAST = settings(max_examples=60, deadline=None)


@FAST
@given(num_labels=st.integers(1, 5000), num_heads=st.integers(1, 4))
def test_num_heads_obeys_waste_rule_and_round_trips(num_labels, num_heads):
    codec = MixedRadix(num_labels, num_heads=num_heads)
    assert len(codec.sizes) == num_heads and all(s >= 1 for s in codec.sizes)
    waste = math.prod(codec.sizes) - num_labels
    assert 0 <= waste < math.prod(codec.sizes[1:])
    labels = torch.arange(num_labels)
    codes = codec.encode(labels)  # [C, H]
    assert codes.shape == (num_labels, num_heads)
    assert torch.equal(codec.decode(codes), labels)
    assert codec.is_valid(codes).all()


@FAST
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4), data=st.data())
def test_explicit_sizes_validity_matches_enumeration(sizes, data):
    num_labels = data.draw(st.integers(1, math.prod(sizes)))
    codec = MixedRadix(num_labels, sizes=sizes)
    # every digit tuple, most significant first: its index in lexicographic order is its label
    all_codes = torch.tensor(list(itertools.product(*[range(s) for s in sizes])), dtype=torch.long)
    expected_labels = torch.arange(math.prod(sizes))
    assert torch.equal(codec.decode(all_codes), expected_labels)
    assert torch.equal(codec.is_valid(all_codes), expected_labels < num_labels)
    assert torch.equal(codec.encode(expected_labels[:num_labels]), all_codes[:num_labels])


def test_first_digit_is_most_significant():
    codec = MixedRadix(1000, sizes=[40, 25])
    assert codec.encode(torch.tensor([0, 24, 25, 999])).tolist() == [[0, 0], [0, 24], [1, 0], [39, 24]]


def test_balanced_sizes_are_near_the_root():
    assert MixedRadix(1000, num_heads=3).sizes == [10, 10, 10]
    assert MixedRadix(999, num_heads=3).sizes == [10, 10, 10]
    assert MixedRadix(100, num_heads=2).sizes == [10, 10]
    sizes = MixedRadix(670091, num_heads=2).sizes
    assert max(sizes) - min(sizes) <= 2 and math.prod(sizes) - 670091 < sizes[1]


def test_is_valid_rejects_out_of_range_digits_and_batch_shapes():
    codec = MixedRadix(5, sizes=[3, 2])
    codes = torch.tensor([[[0, 1], [2, 0]], [[2, 1], [-1, 0]], [[0, 2], [1, 1]]])  # [3, 2, H]
    assert codec.is_valid(codes).tolist() == [[True, True], [False, False], [False, True]]
    assert codec.decode(codes[0]).tolist() == [1, 4]


def test_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"sizes=\[2, 3\]: product 6 < num_labels=7"):
        MixedRadix(7, sizes=[2, 3])
    with pytest.raises(ConfigError, match="sizes="):
        MixedRadix(7, sizes=[0, 8])
    with pytest.raises(ConfigError, match="num_heads=0"):
        MixedRadix(7, num_heads=0)
    with pytest.raises(ConfigError, match="num_heads=3 conflicts"):
        MixedRadix(7, sizes=[3, 3], num_heads=3)
    with pytest.raises(DataError, match="label 7 out of range"):
        MixedRadix(7, sizes=[3, 3]).encode(torch.tensor([1, 7]))


@FAST
@given(num_labels=st.integers(1, 3000), data=st.data())
def test_contiguous_groups_follow_the_ceil_rule(num_labels, data):
    g0 = data.draw(st.integers(1, num_labels))
    groups = contiguous_groups(num_labels, num_groups=g0)
    num_groups, per = groups.sizes
    assert per == -(-num_labels // g0)
    assert num_groups * per - num_labels < per  # at most the last group is ragged
    assert num_groups <= g0
    labels = torch.arange(num_labels)
    assert torch.equal(groups.encode(labels)[:, 0], labels // per)


def test_contiguous_groups_amazon670k_example():
    # the MHE setting: requested 8400 groups of Amazon-670K become {8377; 80}, 69 invalid codes
    groups = contiguous_groups(670091, num_groups=8400)
    assert groups.sizes == [8377, 80] and groups.num_codes - 670091 == 69
    assert contiguous_groups(100, group_size=7).sizes == [15, 7]
    with pytest.raises(ConfigError, match="num_groups=0"):
        contiguous_groups(10, num_groups=0)
    with pytest.raises(ConfigError, match="group_size=11"):
        contiguous_groups(10, group_size=11)
