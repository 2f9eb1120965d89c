import subprocess
import sys

OPTIONAL = ("flash_attn", "flash_attn_interface", "flashinfer", "xformers", "liger_kernel", "triton")


def test_import_layerzero_imports_no_optional_backend():
    code = (
        "import sys, torch\n"
        "import layerzero, layerzero.dispatch, layerzero.registry, layerzero.selection, layerzero.policy\n"
        "from layerzero.registry import get_global_kernel_registry\n"
        "reg = get_global_kernel_registry()\n"
        "assert len(reg) > 20\n"
        "from layerzero.dispatch import dispatch\n"
        "x = torch.randn(2, 8)\n"
        "dispatch('rms_norm', {'x': x, 'weight': torch.ones(8)})\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {OPTIONAL!r}]\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
