"""Target and option checks shared by every head (`xlc.heads._targets`)."""

from __future__ import annotations

import pytest
import torch

from xlc.errors import ConfigError, DataError
from xlc.heads._targets import PAL_REDUCTIONS, check_choice, check_k, unique_targets, validate_targets


def test_validate_targets_names_the_row_and_the_expected_form():
    with pytest.raises(DataError, match="row 1"):
        validate_targets(torch.tensor([[0, -1], [11, 2]]), 11, 2)
    with pytest.raises(DataError, match="long tensor"):
        validate_targets(torch.zeros(2), 11, 2)
    with pytest.raises(DataError, match="B=3"):
        validate_targets(torch.zeros(2, dtype=torch.long), 11, 3)
    validate_targets(torch.tensor([[0, 3, -1], [-1, -1, -1], [10, 10, 2]]), 11, 3)


def test_unique_targets_pads_repeats():
    assert unique_targets(torch.tensor([[5, 5, 2], [-1, 4, -1]])).tolist() == [[2, 5, -1], [-1, -1, 4]]
    assert unique_targets(torch.tensor([3, -1])).tolist() == [[3], [-1]]


def test_k_and_choices_name_the_value_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"k=0: expected 1 <= k <= number of labels \(5\)"):
        check_k(0, 5)
    check_k(5, 5)
    with pytest.raises(ConfigError, match="multi_label_loss='avg': expected one of pal_sum, pal_mean"):
        check_choice("multi_label_loss", "avg", PAL_REDUCTIONS)

