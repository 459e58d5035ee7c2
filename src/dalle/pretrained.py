"""Save and load a model as a directory: `config.json` + `model.safetensors`.

The convention users know from Hugging Face transformers/diffusers: `from_pretrained` takes the
directory, or a Hub id (`owner/name`, with a `subfolder` for one part of a pipeline) fetched into
the local cache by `dalle.hub`. Weights are read with safetensors, so loading never unpickles
anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dalle.config import JSONConfig
from dalle.errors import DalleError
from dalle.hub import resolve
from dalle.utils import atomic_write, ensure_writable_dir, resolve_device

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
    def from_pretrained(cls: type[M], directory: str | Path, device: str | torch.device = "cpu",
                        max_parameters: int | None = None, *, subfolder: str | None = None) -> M:
        """Build the model from `directory/config.json` and load `model.safetensors` into it, on
        `device` ("auto": CUDA when there is one). `directory` may be a Hub id, `owner/name` or
        `owner/name@revision` (a folder of that name wins); `subfolder` picks a part of a
        pipeline, e.g. `Prior.from_pretrained("owner/name", subfolder="prior")`.

        Nothing is allocated before the files agree: the config is checked field by field, the
        model is first built on the meta device (no memory) and its tensors' names and shapes are
        compared with the safetensors header, and a model of more than `max_parameters`
        (default: DALLE_MAX_PARAMETERS, else 2e10, above the paper's 12B prior) is refused.
        A damaged or mismatched file is one line naming it.
        """
        directory = resolve(directory, subfolder)
        if not directory.is_dir():
            raise FileNotFoundError(f"no model directory at {directory}")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}")
        config = cls.config_class.load(directory / CONFIG_NAME)
        stored = read_header(weights)
        try:
            with torch.device("meta"):
                expected = {k: tuple(v.shape) for k, v in cls(config).state_dict().items()}
        except (RuntimeError, OverflowError) as e:  # sizes beyond what a tensor can hold
            raise DalleError(f"{directory / CONFIG_NAME} describes a model that cannot be built "
                             f"({str(e).splitlines()[0]})") from None
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        mismatched = [k for k in expected if k in stored and stored[k] != expected[k]]
        if missing or unexpected or mismatched:
            detail = missing[:1] or unexpected[:1] or mismatched[:1]
            raise DalleError(
                f"{weights} does not match {directory / CONFIG_NAME}: {len(missing)} missing, "
                f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors "
                f"(first: {detail[0]})"
            )
        limit = max_parameters or int(float(os.environ.get("DALLE_MAX_PARAMETERS", "2e10")))
        count = sum(math.prod(shape) for shape in expected.values())
        if count > limit:
            raise DalleError(f"{directory / CONFIG_NAME} describes a model of {count:,} parameters, "
                             f"more than the {limit:,} allowed (DALLE_MAX_PARAMETERS)")
        model = cls(config)
        with _readable(weights):
            state = load_file(str(weights))
        model.load_state_dict(state)
        return model.to(resolve_device(device))

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


@contextmanager
def _readable(weights: Path) -> Iterator[None]:
    """Turn whatever a damaged safetensors file raises into one line naming the file."""
    try:
        yield
    except Exception as e:  # safetensors raises its own error types, and OSError, for damaged files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DalleError(f"{weights} is not a readable safetensors file ({reason})") from None


def read_header(weights: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a safetensors file, from its header alone (no tensor is read)."""
    with _readable(weights), safe_open(str(weights), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def init_transformer_weights(module: torch.nn.Module) -> None:
    """GPT-2 initialisation for `Module.apply`: N(0, 0.02) linear and embedding weights, zero biases."""
    if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
        torch.nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, torch.nn.Linear) and module.bias is not None:
        torch.nn.init.zeros_(module.bias)
