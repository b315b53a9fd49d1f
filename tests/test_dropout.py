"""layers/dropout.py: the CPU mask from 16-bit numbers is dropout, by its statistics and its gradient."""

import pytest
import torch

from scratchllm.layers.dropout import LEVELS, Dropout, dropout, keep_mask


def test_evaluation_and_p_zero_are_the_identity():
    x = torch.randn(4, 8)
    layer = Dropout(0.3).eval()
    assert layer(x) is x and dropout(x, 0.0) is x


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_kept_fraction_scale_and_expectation(p):
    torch.manual_seed(0)
    n = 1 << 20
    y = dropout(torch.ones(n), p)
    keep_p = 1 - round(p * LEVELS) / LEVELS  # p rounded to a multiple of 1/65536
    assert abs(keep_p - (1 - p)) <= 0.5 / LEVELS
    kept = y != 0
    assert torch.all(y[kept] == 1 / keep_p)  # the kept elements scaled by the inverse keep probability
    sigma = (keep_p * (1 - keep_p) / n) ** 0.5
    assert abs(kept.float().mean().item() - keep_p) < 5 * sigma
    assert abs(y.mean().item() - 1.0) < 5 * sigma / keep_p  # the expectation is x
    # the four 16-bit numbers of one 64-bit draw are independent: every pair of neighbours is kept
    # together as often as two independent elements are
    both = (kept[:-1] & kept[1:]).float().mean().item()
    assert abs(both - keep_p ** 2) < 5 * (keep_p ** 2 * (1 - keep_p ** 2) / n) ** 0.5
    for offset in range(4):  # and each position within a draw is kept as often as the others
        assert abs(kept[offset::4].float().mean().item() - keep_p) < 5 * 2 * sigma


def test_gradient_is_the_mask_and_the_seed_repeats_it():
    x = torch.randn(3, 5, 7, requires_grad=True)
    torch.manual_seed(1)
    y = dropout(x, 0.25)
    y.sum().backward()
    kept = y.detach() != 0
    keep_p = 1 - round(0.25 * LEVELS) / LEVELS
    torch.testing.assert_close(x.grad, kept.float() / keep_p)
    torch.testing.assert_close(y.detach(), x.detach() * kept / keep_p)
    torch.manual_seed(1)
    torch.testing.assert_close(dropout(x.detach(), 0.25), y.detach())  # same seed, same mask
    assert not torch.equal(dropout(x.detach(), 0.25), y.detach())  # the generator moved on


def test_shapes_and_dtypes():
    mask, keep_p = keep_mask((2, 3, 5), 0.5)  # 30 elements: not a multiple of four
    assert mask.shape == (2, 3, 5) and mask.dtype == torch.bool and keep_p == 0.5
    x = torch.randn(2, 3, dtype=torch.bfloat16)
    assert dropout(x, 0.5).dtype == torch.bfloat16
    assert keep_mask((4,), 0.99999999)[1] == 1 / LEVELS  # p near 1 still keeps something: no division by zero
