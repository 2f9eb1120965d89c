import torch

from layerzero.context import SelectionContext, dtype_name


def test_from_inputs_attention_reads_metadata():
    q = torch.randn(2, 5, 8, 32)
    k = torch.randn(2, 9, 2, 32)
    v = torch.randn(2, 9, 2, 16)
    mask = torch.ones(2, 1, 5, 9, dtype=torch.bool)
    c = SelectionContext.from_inputs("attention.causal", {"query": q, "key": k, "value": v}, attn_mask=mask, softcap=50.0)
    assert (c.batch_size, c.seq_len_q, c.seq_len_k, c.num_heads, c.num_kv_heads, c.head_dim, c.head_dim_v) == (2, 5, 9, 8, 2, 32, 16)
    assert c.enable_gqa and c.is_causal and c.attn_mask == "bool" and c.softcap == 50.0
    assert c.dtype == "float32" and c.device == "cpu" and c.platform == "cpu"
    hash(c)


def test_from_inputs_other_ops():
    x = torch.randn(3, 4, 16, dtype=torch.bfloat16)
    c = SelectionContext.from_inputs("rms_norm", {"x": x, "weight": torch.ones(16)}, offset=1.0, casting="gemma")
    assert (c.hidden_size, c.batch_size, c.norm_offset, c.casting, c.dtype) == (16, 12, 1.0, "gemma", "bfloat16")
    q = torch.randn(1, 4, 7, 64)
    k = torch.randn(1, 2, 7, 64)
    c = SelectionContext.from_inputs("rope", {"q": q, "k": k, "cos": torch.randn(1, 7, 32), "sin": torch.randn(1, 7, 32)})
    assert (c.num_heads, c.num_kv_heads, c.seq_len, c.head_dim, c.rotary_dim) == (4, 2, 7, 64, 32)
    g = torch.randn(5, 11)
    c = SelectionContext.from_inputs("swiglu", {"gate": g, "up": g})
    assert (c.batch_size, c.hidden_size) == (5, 11)


def test_derived_fields_and_aliases():
    c = SelectionContext(seq_len=10, num_heads=8, num_kv_heads=2, dtype="bf16", device="cuda:1")
    assert c.seq_len_q == 10 and c.seq_len_k == 10 and c.enable_gqa and c.dtype == "bfloat16" and c.platform == "cuda"
    assert dtype_name(torch.float16) == "float16" and dtype_name("torch.float32") == "float32"
    assert SelectionContext(extra={"b": 1, "a": 2}).extra == (("a", 2), ("b", 1))
