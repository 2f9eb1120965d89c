"""Hot reload: change the kernel policy of a running process by editing a file, and roll back.

The script writes a policy file, starts a HotReloadDispatcher watching it, and then edits the file the
way a deploy would (write a temp file, rename it over the old one):

1. v1 locks rms_norm to ``torch_rms_norm``;
2. v2 locks it to ``reference_rms_norm``: the watcher loads it, the next call runs the new kernel;
3. a broken edit (a typo in a kernel id) is rejected with the field and value, v2 keeps serving;
4. ``rollback()`` re-activates v1 without touching the file.

Runs on CPU in about a second: ``python examples/hot_reload.py``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import torch

from layerzero.dispatch import ConfigVersion, create_hot_reload_dispatcher

POLICY = """\
version: "1.0"
kernel_locks:
  rms_norm: {kernel}
"""


def write_atomically(path: Path, text: str) -> None:
    """What deploy tools do: readers see the old file or the new one, never half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    inputs = {"x": torch.randn(8, 64), "weight": torch.ones(64)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernels.yaml"
        write_atomically(path, POLICY.format(kernel="torch_rms_norm"))

        dispatcher = create_hot_reload_dispatcher(str(path), watch_interval_seconds=0.05)
        reloaded, rejected = threading.Event(), threading.Event()

        @dispatcher.on_reload
        def on_reload(version: ConfigVersion) -> None:
            print(f"  [callback] now serving v{version.version} ({version.origin}, hash {version.config_hash[:12]})")
            reloaded.set()

        @dispatcher.on_error
        def on_error(error: Exception) -> None:
            print(f"  [callback] rejected edit, still serving v{dispatcher.current_version.version}:")
            for problem in getattr(error, "problems", ()):
                print(f"      {problem.field}: {problem.message.split(';')[0]} (got {problem.value!r})")
            rejected.set()

        def run(step: str) -> str:
            kernel = dispatcher.dispatch("rms_norm", inputs).kernel_id
            print(f"{step:<34} v{dispatcher.current_version.version}: rms_norm -> {kernel}")
            return kernel

        try:
            assert run("1. initial policy") == "torch_rms_norm"

            write_atomically(path, POLICY.format(kernel="reference_rms_norm"))
            assert reloaded.wait(5.0), "the watcher did not pick up the new file"
            assert run("2. after editing the file") == "reference_rms_norm"

            write_atomically(path, POLICY.format(kernel="reference_rms_nrom"))  # a typo
            assert rejected.wait(5.0), "the broken edit was not reported"
            assert run("3. after a broken edit") == "reference_rms_norm"

            reloaded.clear()
            dispatcher.rollback()
            assert run("4. after rollback()") == "torch_rms_norm"
        finally:
            dispatcher.stop()

        s = dispatcher.stats
        print(f"stats: reloads={s.total_reloads} failed={s.failed_reloads} rollbacks={s.rollbacks} "
              f"current=v{s.current_version} versions kept={[v.version for v in dispatcher.versions]}")


if __name__ == "__main__":
    main()
