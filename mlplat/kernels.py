"""Jupyter kernel specs that load ``mlplat_magics``: "Python 3 (mlplat)" and "Python 3 (mlplat, GPU)".

The specs are the files in ``mlplat/kernelspecs/``. The CPU one ships with the package
(``share/jupyter/kernels/mlplat``, as ipykernel ships ``python3``), so notebooks and the
templates that name it run wherever mlplat is installed; ``mlplat install-kernels`` adds
both, for this interpreter, to another prefix (the hub's). The CPU kernel hides the GPUs,
as a CPU workspace does; the GPU kernel pins ``CUDA_VISIBLE_DEVICES`` and sets
``MLPLAT_DEVICE``, by which training fits on that GPU (see :mod:`mlplat.training.device`).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

SPECS = Path(__file__).parent / "kernelspecs"
KERNELS = ("mlplat", "mlplat-gpu")


def kernel_spec(name: str) -> dict:
    """The ``kernel.json`` of one of :data:`KERNELS`, for the running interpreter."""
    spec = json.loads((SPECS / name / "kernel.json").read_text())
    spec["argv"][0] = sys.executable  # not whichever `python` the launching Jupyter finds
    return spec


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
