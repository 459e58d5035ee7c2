"""Exponential moving average of a model's weights (used for the dVAE, paper appendix A.2)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps `shadow`, a frozen copy of the model whose weights track an EMA of the live ones."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = [p for p in model.parameters()]
        ema = [p for p in self.shadow.parameters()]
        floating = [(e, p) for e, p in zip(ema, live) if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floating], [p.detach() for _, p in floating],
                             1 - self.decay)
        for e, b in zip(self.shadow.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
