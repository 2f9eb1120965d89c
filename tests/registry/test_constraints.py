from layerzero.registry import KernelConstraints
from layerzero.selection import SelectionContext


def ctx(**kw):
    kw.setdefault("operation", "attention.causal")
    return SelectionContext(**kw)


def test_each_limit_names_the_fact_and_the_limit():
    c = KernelConstraints(
        platforms=frozenset({"cuda"}), dtypes=frozenset({"float16", "bfloat16"}), max_head_dim=256,
        head_dim_multiple=8, min_compute_capability=(8, 0), supports_gqa=False, max_seq_len=4096,
        supports_dropout=False, supports_bool_mask=False, requires_contiguous=True, supports_grad=False,
    )
    reasons = c.check(ctx(platform="cuda", device="cuda:0", dtype="float32", head_dim=320, compute_capability=(7, 5),
                          num_heads=8, num_kv_heads=2, seq_len=8192, dropout_p=0.1, attn_mask="bool",
                          is_contiguous=False, requires_grad=True))
    expected = [
        "dtype float32 not in {bfloat16, float16}",
        "compute capability 7.5 < 8.0",
        "head_dim 320 > 256",
        "grouped-query attention (8 query / 2 kv heads) not supported",
        "seq_len_q 8192 > 4096",
        "dropout_p 0.1 not supported",
        "boolean attention mask not supported",
        "non-contiguous input not supported",
        "autograd (requires_grad) not supported",
    ]
    for e in expected:
        assert e in reasons, (e, reasons)
    assert any("not a multiple of 8" in r for r in c.check(ctx(head_dim=100)))
    assert c.check(ctx(platform="cpu")) [0] == "device cpu not supported (needs {cuda})"


def test_unknown_facts_do_not_reject():
    c = KernelConstraints(platforms=frozenset({"cuda"}), max_head_dim=64, dtypes=frozenset({"float16"}))
    assert c.check(SelectionContext()) == []


def test_feature_flags():
    c = KernelConstraints()
    assert "softcap 30.0 not supported" in c.check(ctx(softcap=30.0))
    assert "sliding_window 128 not supported" in c.check(ctx(sliding_window=128))
    assert "attention sinks (s_aux) not supported" in c.check(ctx(has_sinks=True))
    br = KernelConstraints(supports_bottom_right_causal=False)
    assert br.check(ctx(is_causal=True, seq_len_q=4, seq_len_k=16))
    assert br.check(ctx(is_causal=True, seq_len_q=1, seq_len_k=16)) == []  # decode: every key, no alignment issue
    rope = KernelConstraints(supports_partial_rotary=False, supports_interleaved=False)
    r = rope.check(SelectionContext(operation="rope", head_dim=64, rotary_dim=32, interleaved=True))
    assert "partial rotary (rotary_dim 32 < head_dim 64) not supported" in r and "interleaved rotary not supported" in r


def test_custom_checks_and_describe():
    def even_heads(c):
        """even head count"""
        return None if not c.num_heads or c.num_heads % 2 == 0 else f"num_heads {c.num_heads} is odd"

    c = KernelConstraints(custom=(even_heads,), max_head_dim=128)
    assert c.check(ctx(num_heads=3)) == ["num_heads 3 is odd"]
    d = c.describe()
    assert d["max_head_dim"] == 128 and d["custom"] == ["even head count"]


def test_backend_status_checks_get_the_status_they_are_handed():
    """A limit that depends on the installed library build reads the status its caller passes in (no global
    registry), and is skipped where no status is known."""
    from layerzero.registry import BackendStatus, needs_backend_status

    seen = []

    @needs_backend_status
    def new_enough(c, status):
        """needs lib >= 2"""
        seen.append(status)
        return None if status.version == "2.0" else f"lib {status.version} < 2"

    c = KernelConstraints(custom=(new_enough,))
    assert c.check(ctx(), BackendStatus(True, "1.0")) == ["lib 1.0 < 2"]
    assert c.check(ctx(), BackendStatus(True, "2.0")) == []
    assert c.check(ctx()) == [] and len(seen) == 2
    assert c.describe()["custom"] == ["needs lib >= 2"]
