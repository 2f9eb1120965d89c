"""A materialized mask that is exactly causal is recognized (and run as ``is_causal=True``) by the attention
custom op; anything else is left alone, and each mask object is checked once."""

from __future__ import annotations

import pytest
import torch

from layerzero import ops
from layerzero.operations import causal_mask
from layerzero.operations import custom_op

S = causal_mask.MIN_CHECKED_SEQ


def _tril(batch: int = 2, seq: int = S) -> torch.Tensor:
    return torch.ones(seq, seq, dtype=torch.bool).tril().expand(batch, 1, seq, seq).clone()


@pytest.fixture
def comparisons(monkeypatch):
    """Counts the device comparisons (each one a host sync on CUDA)."""
    calls: list[int] = []
    real = causal_mask._compare

    def counting(mask, seq):
        calls.append(seq)
        return real(mask, seq)

    monkeypatch.setattr(causal_mask, "_compare", counting)
    return calls


def test_plain_causal_masks_are_recognized():
    assert causal_mask.is_plain_causal(_tril(), S, S)
    assert causal_mask.is_plain_causal(_tril(1)[0, 0], S, S)  # (Sq, Sk)
    assert causal_mask.is_plain_causal(_tril(1).expand(3, 4, S, S), S, S)  # broadcast over batch and heads


@pytest.mark.parametrize("change", ["padding", "window", "one_key_hidden", "one_future_key", "last_row"])
def test_other_masks_are_not(change):
    mask = _tril()
    if change == "padding":
        mask[0, :, :, :2] = False
    elif change == "window":
        mask &= torch.ones(S, S, dtype=torch.bool).triu(-(S // 2))
    elif change == "one_key_hidden":
        mask[1, 0, S // 2, 3] = False
    elif change == "one_future_key":
        mask[1, 0, 3, S // 2] = True
    else:
        mask[1, 0, S - 1, S - 1] = False
    assert not causal_mask.is_plain_causal(mask, S, S)


def test_the_comparison_runs_in_chunks(monkeypatch):
    monkeypatch.setattr(causal_mask, "_ROWS_PER_CHUNK_ELEMENTS", 2 * S * 5)  # 5 rows of both batch rows a chunk
    assert causal_mask.is_plain_causal(_tril(), S, S)
    mask = _tril()
    mask[1, 0, S - 1, 0] = False  # in the last chunk
    assert not causal_mask.is_plain_causal(mask, S, S)


@pytest.mark.parametrize("what", ["float", "short", "cross", "broadcast_keys"])
def test_checked_only_where_it_can_pay(what, comparisons):
    if what == "float":
        mask, sq, sk = torch.zeros(1, 1, S, S), S, S
    elif what == "short":
        mask, sq, sk = _tril(seq=S - 1), S - 1, S - 1
    elif what == "cross":
        mask, sq, sk = torch.ones(1, 1, S, 2 * S, dtype=torch.bool), S, 2 * S
    else:
        mask, sq, sk = torch.ones(1, 1, S, 1, dtype=torch.bool), S, S
    assert not causal_mask.is_plain_causal(mask, sq, sk)
    assert comparisons == []


def custom_op_call_for_test(q, k, v, mask, operation, sliding_window=None):
    """The dispatcher call ``layerzero::attention`` makes for these arguments."""
    args = dict(query=q, key=k, value=v, attn_mask=mask, is_causal=False, scale=None, dropout_p=0.0,
                sliding_window=sliding_window, softcap=None, sinks=None, operation=operation, orchestrator=None)
    return custom_op("attention").to_call(args)


def test_one_comparison_per_mask_object_until_it_changes(comparisons):
    mask = _tril()
    assert all(causal_mask.is_plain_causal(mask, S, S) for _ in range(5))
    assert len(comparisons) == 1
    mask[0, 0, 5, 1] = False  # in place: the tensor's version changes
    assert not causal_mask.is_plain_causal(mask, S, S)
    assert len(comparisons) == 2
    other = _tril()
    assert causal_mask.is_plain_causal(other, S, S)
    assert len(comparisons) == 3


def test_memory_of_verdicts_is_bounded():
    masks = [_tril(1) for _ in range(3 * causal_mask._MAX_REMEMBERED)]
    for mask in masks:
        assert causal_mask.is_plain_causal(mask, S, S)
    assert len(causal_mask._verdicts) <= causal_mask._MAX_REMEMBERED


def test_the_attention_custom_op_runs_a_causal_mask_as_is_causal():
    """The custom op (what a compiled graph calls) dispatches attention.prefill, is_causal=True and no mask
    for a materialized causal mask, and leaves a padding mask as it is."""
    q = torch.randn(2, S, 4, 16)
    k, v = torch.randn(2, S, 2, 16), torch.randn(2, S, 2, 16)
    operation, _inputs, options = custom_op_call_for_test(q, k, v, _tril(), operation="attention.cross")
    assert (operation, options["is_causal"], "attn_mask" in options) == ("attention.prefill", True, False)
    padded = _tril()
    padded[0, :, :, :2] = False
    operation, _inputs, options = custom_op_call_for_test(q, k, v, padded, operation="attention.cross")
    assert (operation, options["is_causal"], options["attn_mask"] is padded) == ("attention.cross", False, True)
    windowed = custom_op_call_for_test(q, k, v, _tril(), operation="attention.cross", sliding_window=8)
    assert windowed[0] == "attention.cross" and "attn_mask" in windowed[2]
    expected = ops.attention(q, k, v, attn_mask=_tril())
    got = torch.ops.layerzero.attention(q, k, v, _tril(), False, None, 0.0, None, None, None, "attention.cross",
                                        None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

