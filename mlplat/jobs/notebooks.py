"""What is checked before a notebook runs as a job: that it exists, declares its parameters, and has a kernel.

A job run and a schedule are checked the same way, when they are made (not at 3 a.m.).
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

from mlplat.errors import JobError


def check_notebook(source: Path, parameters: dict[str, Any], kernel: str | None) -> str:
    """The kernel ``source`` runs on (``kernel``, else its own), once the notebook, its parameters and the kernel
    are known to be usable; else JobError saying what to fix."""
    import nbformat
    import papermill
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager

    if source.suffix != ".ipynb" or not source.is_file():
        raise JobError(f"No notebook at {source}; give the path of an .ipynb file.")
    notebook = nbformat.read(source, as_version=4)
    kernel = kernel or notebook.metadata.get("kernelspec", {}).get("name") or NATIVE_KERNEL_NAME
    if kernel == "python":  # what Jupyter's kernel manager (and so papermill) runs for "python"
        kernel = NATIVE_KERNEL_NAME
    kernels = KernelSpecManager().find_kernel_specs()
    if kernel not in kernels:
        raise JobError(f"No Jupyter kernel {kernel!r}; installed kernels: {', '.join(sorted(kernels))}.")
    # papermill infers parameters by the notebook's kernel language; say which when the notebook does not
    notebook.metadata.setdefault("kernelspec", {"name": kernel, "display_name": kernel, "language": "python"})
    with tempfile.TemporaryDirectory() as folder:
        nbformat.write(notebook, Path(folder) / source.name)
        declared = {p["name"] for p in papermill.inspect_notebook(str(Path(folder) / source.name)).values()}
    unknown = sorted(set(parameters) - declared)
    unread = sorted(set(unknown) & _assigned_parameters(notebook))
    if unread:  # assigned in the cell, yet papermill's parser skipped the line
        raise JobError(f"papermill cannot read the line assigning {unread[0]!r} in {source.name}'s parameters "
                       f"cell (an '=' inside its comment?); write it as `{unread[0]} = value  # comment`.")
    if unknown:
        hint = difflib.get_close_matches(unknown[0], declared, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        declares = sorted(declared) if declared else "nothing (tag a cell 'parameters')"
        raise JobError(f"{source.name} declares no parameter {unknown[0]!r}{did_you_mean}; "
                       f"its parameters cell declares {declares}.")
    return kernel


def _assigned_parameters(notebook: Any) -> set[str]:
    """Names the cell tagged ``parameters`` assigns, as Python reads it."""
    import ast

    names = set()
    for cell in notebook.cells:
        if "parameters" in cell.metadata.get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                continue
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names
