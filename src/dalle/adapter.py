"""A fine-tuned pipeline stored as small files beside the base pipeline it adapts (`dalle finetune`).

    adapted/
      adapter.json   the base pipeline (a bundled name, a folder or a Hub id) and how each part
                     was adapted
      prior/         LoRA: adapter_config.json + adapter_model.safetensors (peft's own format);
                     full fine-tuning: config.json + model.safetensors
      clip/          the same for CLIP, when the new pictures needed it
      sampling.json  the adapted pipeline's sampling defaults, in place of the base's (optional)
      README.md      the model card, with the base's attribution and licences beside it
      training/      how it was made: the codes, the replayed samples, each part's training run

Loading builds the base pipeline, then applies each adapted part. LoRA weights (Hu et al. 2021)
are merged into the base's linear layers, W + (alpha / r) B A, so an adapted pipeline samples at
the base's speed; saving it (`dalle merge`) writes a standalone pipeline.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from dalle.config import JSONConfig
from dalle.errors import DalleError
from dalle.pretrained import PretrainedModel

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_FILE = "adapter.json"
TRAINING_DIR = "training"  # the runs that made an adapter: neither loaded nor copied by a merge
LORA_CONFIG, LORA_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
METHODS = ("lora", "full")
# The linear layers LoRA adapts in the prior and in CLIP: attention's qkv and output
# projections and both MLP layers of every block (peft matches these name suffixes).
LORA_TARGETS = ["qkv", "out", "mlp.0", "mlp.2"]

M = TypeVar("M", bound=PretrainedModel)


@dataclasses.dataclass(frozen=True)
class AdapterConfig(JSONConfig):
    """What `adapter.json` says: the base pipeline, and how the prior and CLIP were adapted
    (`clip` None: the base's CLIP is used as it is)."""

    base: str = ""
    prior: str = "lora"
    clip: str | None = None

    def __post_init__(self) -> None:
        if not self.base:
            raise DalleError("an adapter must name its base pipeline")
        for part, method in (("prior", self.prior), ("clip", self.clip)):
            if method is not None and method not in METHODS:
                raise DalleError(f"{part} was adapted by {method!r}; known: {', '.join(METHODS)}")


def is_adapter(directory: str | Path) -> bool:
    """Whether `directory` holds an adapter rather than a whole pipeline."""
    return (Path(directory) / ADAPTER_FILE).is_file()


def peft_module():
    """peft, or one line saying how to install it (it is an optional dependency)."""
    try:
        import peft
    except ImportError:
        raise DalleError("LoRA adapters need the peft package, a dependency of dalle: pip install 'peft>=0.13'") from None
    return peft


def with_lora(model: PretrainedModel, rank: int, alpha: float, dropout: float = 0.0) -> PeftModel:
    """`model` with trainable LoRA adapters on LORA_TARGETS and every other weight frozen."""
    peft = peft_module()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS)
    return peft.get_peft_model(model, config)


def save_lora(model: PeftModel, directory: Path) -> Path:
    """The adapter alone (a few percent of the model) in peft's format, loadable by
    `peft.PeftModel.from_pretrained` as well as by `load_part`."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dalle.utils import atomic_write, ensure_writable_dir

    directory = ensure_writable_dir(directory)
    model.peft_config["default"].save_pretrained(str(directory))
    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    atomic_write(directory / LORA_WEIGHTS, lambda path: save_file(state, str(path)))
    return directory


def load_part(base: M, directory: Path, method: str) -> M:
    """`base` adapted by what `directory` holds: its LoRA weights merged in, or whole new weights."""
    if method == "full":
        return type(base).from_pretrained(directory, device=base.device)
    for name in (LORA_CONFIG, LORA_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name}: not a LoRA adapter")
    peft = peft_module()
    try:
        adapted = peft.PeftModel.from_pretrained(base, str(directory))
    except (KeyError, RuntimeError, ValueError) as e:  # adapters for other layers or shapes
        raise DalleError(f"{directory} does not fit this base model ({str(e).splitlines()[0]})") from None
    return adapted.merge_and_unload()
