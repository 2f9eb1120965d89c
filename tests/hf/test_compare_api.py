"""The shape of ``compare()``'s result for users: a plain DataFrame, plotting that survives filtering,
clear errors when optional packages are missing, and a progress bar that stays within its total."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("transformers")

from layerzero_hf.compare import compare, compare_policies, plot_comparison  # noqa: E402
from single_thread import one_intra_op_thread  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results():
    with one_intra_op_thread():
        return compare([{"operation": "rms_norm", "tokens": 8, "hidden": 64},
                        {"operation": "swiglu", "tokens": 4, "hidden": 32}],
                       kernels=["torch_rms_norm", "reference_rms_norm", "torch_swiglu", "reference_swiglu"],
                       repeats=2, warmup=0, device="cpu", progress=False)


def test_result_is_a_plain_dataframe_with_noise_columns(results):
    assert type(results) is pd.DataFrame
    assert {"spread", "noisy"} <= set(results.columns)
    assert results["noisy"].map(type).eq(bool).all()


def test_pandas_plot_kind_and_filtered_frames_work(results):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = results.plot(kind="bar", x="kernel_id", y="median_us")  # pandas' plot, not overridden
    assert ax.get_xlabel() == "kernel_id"
    filtered = results[results.operation == "rms_norm"]
    fig = filtered.layerzero.plot()  # the accessor is on every DataFrame, filtered ones included
    assert len([a for a in fig.axes if a.get_visible()]) == 1
    assert plot_comparison(filtered).axes
    with pytest.raises(AttributeError, match="columns of layerzero_hf.compare"):
        pd.DataFrame({"x": [1]}).layerzero.plot()


def test_noisy_rows_are_marked_in_the_plot(results):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    frame = results[results.operation == "swiglu"].copy()
    frame["noisy"] = [True] + [False] * (len(frame) - 1)
    fig = frame.layerzero.plot()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].endswith("(noisy)") and not labels[1].endswith("(noisy)")
    assert len(frame.layerzero.noisy()) == 1


def test_plot_without_matplotlib_names_the_extra(results, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"layerzero-dispatch\[notebook\]"):
        results.layerzero.plot()


def test_compare_policies_progress_never_passes_its_total(monkeypatch):
    import transformers

    from layerzero.tuning import progress

    bars = []

    class Bar:  # records what a tqdm bar would be told
        def __init__(self, total, desc, unit, **kwargs):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, k=1):
            self.n += k

        def set_postfix_str(self, *args, **kwargs):
            pass

        def close(self):
            self.closed = True

    spy = Bar

    monkeypatch.setattr(progress, "progress_bar", spy)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                   max_position_embeddings=32)
    model = transformers.LlamaForCausalLM(cfg).eval()
    compare_policies(model, torch.randint(0, 64, (1, 4)), None, {"rms_norm": "reference_rms_norm"}, repeats=3,
                     warmup=1, progress=True)
    (bar,) = bars
    assert bar.n == bar.total == 4 and bar.closed


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_layerzero_hf_without_transformers_names_the_extra():
    proc = _python("import sys; sys.modules['transformers'] = None\nimport layerzero_hf")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and "layerzero-dispatch[hf]" in last, proc.stderr


def test_compare_is_imported_plainly():
    source = (ROOT / "layerzero_hf" / "__init__.py").read_text()
    assert "except Exception" not in source
    proc = _python("import layerzero_hf\nfrom layerzero_hf.compare import compare\nprint(layerzero_hf.compare is compare)")
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
