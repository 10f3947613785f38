"""Jupyter kernel specs that load ``mlplat_magics``: "Python 3 (mlplat)" and "Python 3 (mlplat, GPU)".

The GPU kernel pins ``CUDA_VISIBLE_DEVICES`` and sets ``MLPLAT_DEVICE``, which
training runs record (tag ``mlplat.device``).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

KERNELS = {
    # A CPU kernel hides the GPUs, as a CPU workspace does: what a run records is what it could use.
    "mlplat": {"display_name": "Python 3 (mlplat)", "env": {"MLPLAT_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}},
    "mlplat-gpu": {"display_name": "Python 3 (mlplat, GPU)", "env": {"MLPLAT_DEVICE": "gpu:0",
                                                                     "CUDA_VISIBLE_DEVICES": "0"}},
}


def kernel_spec(name: str) -> dict:
    """The ``kernel.json`` of one of :data:`KERNELS`, for the running interpreter."""
    return {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.extensions=mlplat_magics"],
        "display_name": KERNELS[name]["display_name"],
        "language": "python",
        "env": KERNELS[name]["env"],
        "metadata": {"debugger": True},
    }


def install_kernels(prefix: str | None = None) -> list[str]:
    """Install both kernel specs into ``prefix`` (default: this environment); return where they went."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    installed = []
    for name in KERNELS:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "kernel.json").write_text(json.dumps(kernel_spec(name), indent=1))
            installed.append(manager.install_kernel_spec(folder, name, prefix=prefix or sys.prefix))
    return installed
