"""Cache keys: each operation's own keyer, the generic key for other operations and the fallbacks."""

import torch

from layerzero.context.buckets import Bucketer
from layerzero.context.keys import make_keyer


def _keyer():
    return make_keyer({"batch_size": Bucketer(), "seq_len_q": Bucketer([100]), "seq_len_k": Bucketer()})


def test_sizes_in_one_bucket_share_a_key_and_thresholds_split_buckets():
    keyer = _keyer()

    def key(seq):
        x = torch.randn(1, 4, seq, 8)
        return keyer("rope", {"q": x, "k": x, "cos": torch.randn(seq, 8), "sin": torch.randn(seq, 8)}, {})

    assert key(65) == key(90)  # same power-of-two bucket, same side of the threshold
    assert key(90) != key(110)  # 100 is a threshold
    assert key(5) != key(6)  # exact below 16


def test_generic_key_for_unknown_operations_and_bad_arguments():
    keyer = _keyer()
    x = torch.randn(2, 8)
    key = keyer("my.op", {"x": x}, {"alpha": [1, 2]})
    assert key[0] == "my.op" and key == keyer("my.op", {"x": x}, {"alpha": [1, 2]})
    generic = keyer("rms_norm", {"y": x}, {})  # the operation's keyer cannot read it: generic key, no crash
    assert generic[0] == "rms_norm" and generic[1][0] == "y"
    unsortable = {1: 0, "a": 0}  # not even a generic key: a key that never hits
    assert keyer("my.op", {"x": x}, unsortable) != keyer("my.op", {"x": x}, unsortable)
