"""Save and load a model as a directory: `config.json` + `model.safetensors`.

The convention users know from Hugging Face transformers/diffusers, fully offline. Weights are
read with safetensors, so loading never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from dalle.config import JSONConfig
from dalle.errors import DalleError
from dalle.utils import atomic_write, ensure_writable_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="PretrainedModel")


class PretrainedModel(torch.nn.Module):
    """Base class for models built from one config and saved as a directory."""

    config_class: ClassVar[type[JSONConfig]]
    config: JSONConfig

    def save_pretrained(self, directory: str | Path,
                        state_dict: dict[str, torch.Tensor] | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write `config.json` and `model.safetensors` into `directory` (created if needed).

        `state_dict` overrides the module's own, e.g. the full weights gathered from FSDP shards.
        `dtype` stores floating-point tensors in it (bf16 halves the file); loading casts them
        back to the model's dtype.
        """
        directory = ensure_writable_dir(directory)
        atomic_write(directory / CONFIG_NAME, (self.config.to_json() + "\n").encode())
        state_dict = self.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().to(dtype if dtype and v.is_floating_point() else v.dtype).contiguous().cpu()
                 for k, v in state_dict.items()}
        atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(state, str(path)))
        return directory

    @classmethod
    def from_pretrained(cls: type[M], directory: str | Path, device: str | torch.device = "cpu") -> M:
        """Build the model from `directory/config.json` and load `model.safetensors` into it."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no model directory at {directory}")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
        config = cls.config_class.load(directory / CONFIG_NAME)
        model = cls(config)
        state = load_file(str(weights))
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or mismatched:
            detail = missing[:1] or unexpected[:1] or mismatched[:1]
            raise DalleError(
                f"{weights} does not match {directory / CONFIG_NAME}: {len(missing)} missing, "
                f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors "
                f"(first: {detail[0]})"
            )
        model.load_state_dict(state)
        return model.to(device)

    @property
    def device(self) -> torch.device:
        """Where the weights are; a model lives on one device."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (float32, or bf16 after `.to(torch.bfloat16)`)."""
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_transformer_weights(module: torch.nn.Module) -> None:
    """GPT-2 initialisation for `Module.apply`: N(0, 0.02) linear and embedding weights, zero biases."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, torch.nn.Linear) and module.bias is not None:
        torch.nn.init.zeros_(module.bias)
