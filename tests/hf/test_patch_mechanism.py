"""The patching mechanism itself: per-instance isolation, exact unpatch, idempotence, the context manager,
torch.compile, structural detection with its self-check, and spec validation."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import layerzero_hf  # noqa: E402
from layerzero.errors import ConfigValidationError, PatchError  # noqa: E402
from layerzero_hf.specs import builtin_specs, parse_arch_spec  # noqa: E402

from conftest import build_tiny_model  # noqa: E402


def _ids(seq: int = 10) -> torch.Tensor:
    return torch.randint(3, 128, (2, seq), generator=torch.Generator().manual_seed(5))


def _kernels_used(model) -> dict[str, int]:
    snap = layerzero_hf.model_telemetry(model)["snapshot"]
    return {k: v.calls for k, v in snap.per_kernel.items() if v.calls}


def test_shipped_specs_cover_the_eight_architectures():
    specs = builtin_specs()
    served = {mt for s in specs.values() for mt in s.model_types}
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"} <= served
    gemma = specs["gemma"].patches_of("rms_norm")[0]
    assert gemma.params["offset"] == 1.0 and gemma.params["casting"] == "gemma"
    assert specs["llama"].patches_of("rms_norm")[0].params["casting"] == "llama"
    assert specs["phi3"].patches_of("mlp")[0].params["layout"] == "gate_up_fused"
    assert specs["gpt_oss"].patches_of("rope")[0].params["tables"] == "half"
    assert specs["llama"].patches_of("rope")[0].params["tables"] == "full"


def test_attribute_paths_select_qk_norms():
    report = layerzero_hf.patch(build_tiny_model("qwen3"))
    by_path = {p.path: p.source for p in report.patched}
    assert by_path["model.layers.0.self_attn.q_norm"] == "qk_norm"
    assert by_path["model.layers.1.self_attn.k_norm"] == "qk_norm"
    assert by_path["model.layers.0.input_layernorm"] == "rms_norm"


def test_two_models_are_independent():
    from transformers.models.llama import modeling_llama

    original_rope = modeling_llama.apply_rotary_pos_emb
    a, b, plain = build_tiny_model("llama"), build_tiny_model("llama"), build_tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        ref = plain(ids).logits
    ra = layerzero_hf.patch(a, kernels={"rms_norm": "reference_rms_norm"})
    rb = layerzero_hf.patch(b)
    assert ra.orchestrator != rb.orchestrator
    assert modeling_llama.apply_rotary_pos_emb is original_rope  # the module global is never rewritten
    assert not any("forward" in m.__dict__ for m in plain.modules())
    with torch.no_grad():
        out_a, out_b, out_plain = a(ids).logits, b(ids).logits, plain(ids).logits
    assert torch.equal(out_plain, ref)
    assert (out_a - ref).abs().max() <= 1e-4 and (out_b - ref).abs().max() <= 1e-4
    used_a, used_b = _kernels_used(a), _kernels_used(b)
    assert used_a.get("reference_rms_norm") == 5 and "torch_rms_norm" not in used_a
    assert used_b.get("torch_rms_norm") == 5 and "reference_rms_norm" not in used_b
    # unpatching one leaves the other patched
    layerzero_hf.unpatch(a)
    assert layerzero_hf.is_patched(b) and not layerzero_hf.is_patched(a)
    assert "forward" in b.model.layers[0].mlp.__dict__


def test_patch_is_idempotent_and_unpatch_is_exact():
    model = build_tiny_model("qwen3")
    class_forwards = {name: type(m).forward for name, m in model.named_modules()}
    overlays_before = {k for k in sys.modules if k.startswith("_layerzero_overlay_")}
    layerzero_hf.patch(model, attention=True)
    with torch.no_grad():
        model(_ids())  # attention modules get their call sites
    assert any("_layerzero_call_site" in m.__dict__ for m in model.modules())
    assert layerzero_hf.unpatch(model) is True
    assert not any("_layerzero_call_site" in m.__dict__ for m in model.modules())
    report = layerzero_hf.patch(model)
    bound = {name: m.__dict__["forward"] for name, m in model.named_modules() if "forward" in m.__dict__}
    assert layerzero_hf.patch(model) is report  # same arguments: nothing changes
    assert {name: m.__dict__["forward"] for name, m in model.named_modules() if "forward" in m.__dict__} == bound
    # different arguments: re-patched from a clean state (no stacking)
    again = layerzero_hf.patch(model, only=["rms_norm"])
    assert again is not report and set(again.counts()) == {"rms_norm"}
    assert "forward" not in model.model.layers[0].mlp.__dict__
    assert report.orchestrator not in __import__("layerzero.ops", fromlist=["x"]).list_orchestrators()
    assert layerzero_hf.unpatch(model) is True
    assert layerzero_hf.unpatch(model) is False
    for name, m in model.named_modules():
        assert "forward" not in m.__dict__
        assert type(m).forward is class_forwards[name]
        assert "_layerzero_orchestrator" not in m.__dict__ and "_layerzero_call_site" not in m.__dict__
    assert {k for k in sys.modules if k.startswith("_layerzero_overlay_")} == overlays_before


def test_context_manager_restores_previous_state():
    model = build_tiny_model("gemma")
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    with layerzero_hf.patched(model) as report:
        assert report.counts()["rms_norm"] == 5
        assert layerzero_hf.is_patched(model)
    assert not layerzero_hf.is_patched(model)
    assert not any("forward" in m.__dict__ for m in model.modules())
    layerzero_hf.patch(model, only=["mlp"])
    with layerzero_hf.patched(model):
        assert layerzero_hf.patch_report(model).counts().keys() == {"rms_norm", "rope", "mlp", "residual_norm"}
    assert set(layerzero_hf.patch_report(model).counts()) == {"mlp"}  # the earlier patch is back
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4


def test_report_renders_text_and_html():
    model = build_tiny_model("phi3")
    report = layerzero_hf.patch(model)
    text = repr(report)
    assert "Phi3MLP -> swiglu" in text and "gate_up_fused" in text and "partial rotary 8/16" in text
    assert report.orchestrator in text
    html = report._repr_html_()
    assert "<table>" in html and "model.layers.0.mlp" in html
    assert report.to_dict()["model_type"] == "phi3"


@pytest.mark.parametrize("arch", ["llama", "gpt_oss"])  # gpt_oss: half-width RoPE tables widened in the graph
def test_torch_compile_fullgraph_of_a_patched_model(arch):
    model = build_tiny_model(arch)
    ids = _ids(8)
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
    layerzero_hf.patch(model)
    torch._dynamo.reset()
    # fullgraph=True raises on any graph break; aot_eager traces the custom ops through AOTAutograd without
    # a C++ toolchain (Inductor codegen is exercised by the GPU benchmark).
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(ids, use_cache=False).logits
    assert (out - ref).abs().max() <= 1e-4
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------- unknown archs
class OddNorm(nn.Module):
    """Looks like an RMSNorm (weight, eps, rsqrt) but centres first: the self-check must refuse it."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n) + 0.1 * torch.randn(n))
        self.eps = 1e-6

    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class PlainRMSNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n) + 0.1 * torch.randn(n))
        self.variance_epsilon = 1e-5

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class GatedMLP(nn.Module):
    def __init__(self, n, act):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(n, 2 * n), nn.Linear(n, 2 * n), nn.Linear(2 * n, n)
        self.act_fn = act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Toy(nn.Module):
    def __init__(self, n=32):
        super().__init__()
        self.norm_a = PlainRMSNorm(n)
        self.norm_b = OddNorm(n)
        self.mlp_silu = GatedMLP(n, nn.SiLU())
        self.mlp_relu = GatedMLP(n, nn.ReLU())
        self.ln = nn.LayerNorm(n)
        self.torch_rms = nn.RMSNorm(n, eps=1e-6)

    def forward(self, x):
        return self.torch_rms(self.ln(self.mlp_relu(self.mlp_silu(self.norm_b(self.norm_a(x))))))


def test_unknown_architecture_is_detected_and_self_checked():
    toy = Toy().eval()
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        ref = toy(x)
    report = layerzero_hf.patch(toy, rules=False)
    assert report.spec == "detected"
    patched = {p.path: p for p in report.patched}
    skipped = {s.path: s for s in report.skipped}
    assert patched["norm_a"].op == "rms_norm" and "offset=1 casting=gemma" in patched["norm_a"].detail
    assert patched["mlp_silu"].op == "swiglu"
    assert patched["ln"].op == "layer_norm"
    assert patched["torch_rms"].op == "rms_norm" and "casting=llama" in patched["torch_rms"].detail
    assert "self-check failed" in skipped["norm_b"].reason
    assert "ReLU" in skipped["mlp_relu"].reason
    assert "forward" not in toy.norm_b.__dict__ and "forward" not in toy.mlp_relu.__dict__
    with torch.no_grad():
        assert (toy(x) - ref).abs().max() <= 1e-5
    layerzero_hf.unpatch(toy)
    assert not any("forward" in m.__dict__ for m in toy.modules())


def test_detection_refuses_half_width_rope_that_the_spec_declares():
    """gpt-oss's RoPE takes half-width cos/sin. Its spec says so (``tables: half``) and the patched model
    matches exactly; structural detection assumes HF's full-width tables, so its self-check refuses the
    same function and the report says why (nothing wrong is ever bound)."""
    model = build_tiny_model("gpt_oss")
    ids = _ids()
    with torch.no_grad():
        ref = model(ids).logits
    report = layerzero_hf.patch(model)
    assert report.counts() == {"rms_norm": 5, "rope": 2} and not report.skipped, report
    assert all("half-width" in p.detail for p in report.patched if p.kind == "rope")
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4
    layerzero_hf.unpatch(model)

    matches_nothing = {"model_types": ["gpt_oss"], "patches": [
        {"name": "none", "kind": "rms_norm", "match": {"classes": ["NoSuchNorm"]}}]}
    report = layerzero_hf.patch(model, spec=matches_nothing, detect_unknown=True)
    assert report.counts().get("rms_norm") == 5
    assert report.skipped and all("self-check failed" in s.reason for s in report.skipped if s.kind == "rope")
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4


def test_spec_override_and_validation_errors():
    model = build_tiny_model("llama")
    spec = {"model_types": ["llama"], "patches": [
        {"name": "norms", "kind": "rms_norm", "match": {"classes": ["LlamaRMSNorm"], "paths": ["model.norm"]},
         "params": {"eps_attr": "variance_epsilon"}}]}
    report = layerzero_hf.patch(model, spec=spec, self_check="all")
    assert report.paths() == ["model.norm"] and "self-check" in report.patched[0].detail

    bad = {"model_types": ["x"], "patches": [
        {"kind": "rmsnorm", "match": {"classes": ["A"]}},
        {"kind": "rms_norm", "match": {"classes": ["A"]}, "params": {"casting": "fp8", "offset": "one"}},
        {"kind": "mlp", "match": {}, "params": {}},
        {"kind": "rope", "match": {"classes": ["A"]}, "params": {"tables": "quarter"}}]}
    with pytest.raises(ConfigValidationError) as exc:
        parse_arch_spec(bad, "my_arch.yaml")
    fields = {p.field: p for p in exc.value.problems}
    assert fields["patches[0].kind"].value == "rmsnorm"
    assert fields["patches[1].params.casting"].value == "fp8"
    assert fields["patches[1].params.offset"].value == "one"
    assert "patches[2].params.layout" in fields and "patches[2].match" in fields
    assert fields["patches[3].params.tables"].value == "quarter" and "full, half" in fields["patches[3].params.tables"].message
    assert all(p.source == "my_arch.yaml" for p in exc.value.problems)
    assert "my_arch.yaml" in str(exc.value)

    with pytest.raises(PatchError, match="only="):
        layerzero_hf.patch(model, only=["norms"])
    with pytest.raises(PatchError, match="self_check"):
        layerzero_hf.patch(model, self_check="sometimes")


def test_existing_instance_forward_is_left_alone():
    model = build_tiny_model("llama")
    hooked = model.model.norm
    marker = hooked.forward  # a bound method placed on the instance (as accelerate hooks do)
    hooked.forward = marker
    report = layerzero_hf.patch(model)
    assert any(s.path == "model.norm" and "instance forward" in s.reason for s in report.skipped)
    layerzero_hf.unpatch(model)
    assert hooked.__dict__["forward"] is marker


def test_deepcopy_and_garbage_collection_release_cleanly():
    import copy
    import gc

    from layerzero import ops

    model = build_tiny_model("llama")
    report = layerzero_hf.patch(model)
    clone = copy.deepcopy(model)
    assert layerzero_hf.is_patched(clone)
    assert clone.model.norm.forward.__self__ is clone.model.norm  # rebound to the copied module
    ids = _ids(6)
    with torch.no_grad():
        assert torch.equal(clone(ids).logits, model(ids).logits)
    layerzero_hf.unpatch(model)
    assert report.orchestrator in ops.list_orchestrators()  # the clone still holds it
    layerzero_hf.unpatch(clone)
    assert report.orchestrator not in ops.list_orchestrators()
    assert not any("forward" in m.__dict__ for m in clone.modules())

    dropped = build_tiny_model("qwen3")
    name = layerzero_hf.patch(dropped).orchestrator
    overlays = [k for k in sys.modules if k.startswith("_layerzero_overlay_")]
    del dropped
    gc.collect()
    assert name not in ops.list_orchestrators()
    assert len([k for k in sys.modules if k.startswith("_layerzero_overlay_")]) < len(overlays)


def test_attention_switch_is_restored_by_unpatch(tiny_model_dir):
    pytest.importorskip("layerzero_hf.attention")
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("mistral"), attn_implementation="sdpa")
    ids = _ids(12)
    with torch.no_grad():
        ref = model(ids).logits
    report = layerzero_hf.patch(model, attention=True)
    assert report.attn_implementation == "layerzero" and model.config._attn_implementation == "layerzero"
    assert not any("attention runs through" in n for n in report.notes)
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4
    ops_seen = layerzero_hf.model_telemetry(model)["snapshot"].per_operation
    assert any(op.startswith("attention") for op in ops_seen)
    layerzero_hf.unpatch(model)
    assert model.config._attn_implementation == "sdpa"


def test_accelerate_hooks_compose(tiny_model_dir, tmp_path):
    """Under a device map (cpu + disk offload, the same hooks as device_map="auto" over GPUs) every module
    carries an accelerate hook. hooks="compose" binds the replacements as ``_old_forward`` so the hook still
    loads offloaded weights around them; unpatch puts the original ``_old_forward`` back."""
    pytest.importorskip("accelerate")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "disk", "model.norm": "disk", "lm_head": "disk"}
    plain = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), attn_implementation="sdpa")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_model_dir("llama"), attn_implementation="sdpa", device_map=device_map, offload_folder=tmp_path)
    ids = _ids(8)
    with torch.no_grad():
        ref = plain(ids).logits
    hooks = {n: m.__dict__["forward"] for n, m in model.named_modules() if "forward" in m.__dict__}
    olds = {n: m.__dict__["_old_forward"] for n, m in model.named_modules() if "_old_forward" in m.__dict__}
    assert hooks, "accelerate installed no hooks"

    skipped = layerzero_hf.patch(model, hooks="skip")
    assert skipped.skipped and all("hooks='compose'" in s.reason for s in skipped.skipped)

    report = layerzero_hf.patch(model, hooks="compose")
    assert report.counts() == {"rms_norm": 5, "rope": 2, "mlp": 2}
    # the fused residual norm would call the post-attention norm past its hook: left alone, with the reason
    assert report.skipped and all(s.kind == "residual_norm" and "accelerate hook" in s.reason
                                  for s in report.skipped), report.skipped
    assert all("under accelerate hook" in p.detail for p in report.patched)
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4
    assert layerzero_hf.model_telemetry(model)["snapshot"].per_operation["rms_norm"] == 5
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(ids, **kw), plain.generate(ids, **kw))

    layerzero_hf.unpatch(model)
    assert {n: m.__dict__["forward"] for n, m in model.named_modules() if "forward" in m.__dict__} == hooks
    assert {n: m.__dict__["_old_forward"] for n, m in model.named_modules() if "_old_forward" in m.__dict__} == olds
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() <= 1e-4


def _sites_of(model: nn.Module) -> list:
    """The CallSites held by the model's patched forwards (closure cells)."""
    from layerzero.dispatch import CallSite

    sites = []
    for m in model.modules():
        fn = m.__dict__.get("forward")
        for cell in getattr(getattr(fn, "__func__", fn), "__closure__", None) or ():
            if isinstance(cell.cell_contents, CallSite):
                sites.append(cell.cell_contents)
    return sites


def test_decode_loop_runs_on_bound_plans():
    """Each patched module binds its plan once; a greedy decode loop does not select again, and the output
    matches the unpatched model."""
    plain, model = build_tiny_model("llama"), build_tiny_model("llama")
    ids = _ids()
    layerzero_hf.patch(model)
    with torch.no_grad():
        expected = plain.generate(ids, max_new_tokens=6, do_sample=False)
        model.generate(ids, max_new_tokens=2, do_sample=False)  # prefill + decode shapes seen once
        sites = _sites_of(model)
        before = {id(s): s.binds for s in sites}
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, expected)
    # the post-attention norms' own sites stay unused: their layer calls the norm with the residual add
    used = [s for s in sites if s.binds]
    assert len(used) >= 5 and all(s.bound_kernel for s in used)
    # per site: at most one rebind per call shape (prefill, then decode), never one per step
    assert all(s.binds - before[id(s)] <= 2 for s in sites), [(s, before[id(s)]) for s in sites]
