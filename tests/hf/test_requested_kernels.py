"""A kernel requested for a patched model that cannot run here is never dropped silently: a warning names it
and why, the report shows what really serves the operation, and ``strict=True`` refuses to patch."""

from __future__ import annotations

import pytest

import layerzero_hf
from layerzero.errors import PatchError

transformers = pytest.importorskip("transformers")


@pytest.fixture
def model(tiny_model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()


def test_unrunnable_request_warns_and_the_report_shows_the_kernel_that_runs(model):
    with pytest.warns(RuntimeWarning, match=r"rms_norm cannot run: liger_rms_norm \(.*liger"):
        report = layerzero_hf.patch(model, kernels={"rms_norm": "liger_rms_norm"})
    try:
        assert report.kernels["rms_norm"] != "liger_rms_norm"
        assert report.kernels["rms_norm"] in {"torch_rms_norm", "triton_rms_norm", "reference_rms_norm"}
        assert any("liger_rms_norm" in n for n in report.notes)
    finally:
        layerzero_hf.unpatch(model)


def test_strict_refuses_an_unrunnable_request(model):
    with pytest.raises(PatchError, match="liger_rms_norm"):
        layerzero_hf.patch(model, kernels={"rms_norm": "liger_rms_norm"}, strict=True)
    assert not layerzero_hf.is_patched(model)


def test_runnable_request_is_reported_as_requested(model, recwarn):
    report = layerzero_hf.patch(model, kernels={"rms_norm": "reference_rms_norm"}, strict=True)
    try:
        assert report.kernels == {"rms_norm": "reference_rms_norm"}
        assert not [w for w in recwarn if "cannot run" in str(w.message)]
    finally:
        layerzero_hf.unpatch(model)

