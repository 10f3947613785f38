"""The module a PyTorch model is exported and logged as: the user's module, then its output function.

Its own module (importing torch at the top) so that MLflow's PyTorch flavour can pickle it by name.
"""

from __future__ import annotations

from typing import Any

import torch


class Served(torch.nn.Module):
    """``after(inner(x))``: softmax over a classifier's logits, or the outputs as they are (``after`` None)."""

    def __init__(self, inner: torch.nn.Module, after: Any = None):
        super().__init__()
        self.inner = inner
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return self.after(out) if self.after is not None else out
