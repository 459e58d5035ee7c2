"""One typed config per training stage: the model, the training settings and the data paths.

A run is built from a model preset (or a run's recorded `config.json`) plus overrides by field
name, so a library call, a recipe and the `dalle train-*` commands make the same config. The model
fields that the data fixes (the vocabularies, the code grid) are read from it when training starts:

    run = PriorRun.create(data="codes/train", tokenizer="tokenizer", out="runs/prior", steps=2000)
    train_prior(run)   # AdamW betas (0.9, 0.96), weight decay 4.5e-2, clipping at 4: PRIOR_TRAINING

Every training function writes its run to `<out>/config.json`; `RunClass.load(path)` reads it
back and `create(config=path, **overrides)` reruns it with changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dalle.config import (
    CLIP_TRAINING,
    PRIOR_TRAINING,
    VAE_TRAINING,
    CLIPConfig,
    JSONConfig,
    PriorConfig,
    TrainConfig,
    VAEConfig,
)
from dalle.errors import DalleError
from dalle.utils import atomic_write

R = TypeVar("R", bound="RunConfig")
RUN_FILE = "config.json"  # <out>/config.json; the trained model's own is <out>/model/config.json


@dataclasses.dataclass(frozen=True)
class RunConfig(JSONConfig):
    """Fields shared by every stage's run: where the data is and where the run folder goes.

    Subclasses add `model` (their model config) and `train` (a TrainConfig), name in `needs` the
    paths a run cannot do without and in `derived` the model fields that come from the data
    rather than from the user.
    """

    data: str
    out: str

    if TYPE_CHECKING:  # each stage's run declares these as fields, with its own defaults
        train: TrainConfig

    needs: ClassVar[tuple[str, ...]] = ("data", "out")
    derived: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[type[JSONConfig]]

    def __post_init__(self) -> None:
        # Paths are stored as strings so that the run round-trips through JSON.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                object.__setattr__(self, f.name, str(value))
        missing = [name for name in self.needs if not getattr(self, name)]
        if missing:
            raise DalleError(f"{type(self).__name__} needs {', '.join(missing)} "
                             f"({', '.join('--' + name.replace('_', '-') for name in missing)})")

    @classmethod
    def create(cls: type[R], *, preset: str | None = None, config: str | Path | None = None,
               **overrides: Any) -> R:
        """A run from the model `preset` (default `small`) and the stage's training defaults, or
        from a recorded run `config`, with `overrides` by field name: a field of the run itself
        (`data`, `out`, ...), of its model config (`dim`, `likelihood`, ...) or of its
        TrainConfig (`steps`, `lr`, ...). The model fields that the data determines (`derived`)
        are not settings: training reads them from the data (`fitted`)."""
        if preset is not None and config is not None:
            raise DalleError("give a preset or a recorded config, not both")
        if config is not None:
            settings = cls.load(config).to_dict()
        else:
            settings = {f.name: f.default for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING}
            settings["model"] = cls.model_class.preset(preset or "small").to_dict()
            settings["train"] = settings["train"].to_dict()
        model_fields = {f.name for f in dataclasses.fields(cls.model_class)}  # type: ignore[arg-type]
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        run_fields = {f.name for f in dataclasses.fields(cls)} - {"model", "train"}
        for name, value in overrides.items():
            if name in run_fields:
                settings[name] = str(value) if isinstance(value, Path) else value
            elif name in model_fields and name not in cls.derived:
                settings["model"][name] = value
            elif name in train_fields:
                settings["train"][name] = value
            else:
                choices = sorted((run_fields | model_fields | train_fields) - set(cls.derived))
                raise DalleError(f"{cls.__name__} has no setting {name!r}; the settings are "
                                 f"{', '.join(choices)}")
        for name in cls.needs:  # absent ones are named by __post_init__
            settings.setdefault(name, "")
        cls.follow_settings(settings, overrides, from_preset=config is None)
        return cls.from_dict(settings)

    @classmethod
    def follow_settings(cls, settings: dict[str, Any], overrides: dict[str, Any],
                        from_preset: bool) -> None:
        """Set the model fields that follow other settings unless given themselves."""

    def fitted(self: R) -> R:
        """This run with the `derived` model fields read from its data (training calls it)."""
        return self

    def sized_for(self: R, items: int | None) -> R:
        """This run with its batch cut to a set of `items` pairs smaller than one batch (with a
        warning naming --batch-size); a stream of unknown length is left as it is."""
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        if items is None or items >= self.train.batch_size:
            return self
        batch = items - items % processes
        if batch < 1:
            raise DalleError(f"{self.data} has {items} pairs, fewer than the {processes} processes "
                             "that would share each batch")
        warnings.warn(f"{self.data} has {items} pairs, fewer than one batch of "
                      f"{self.train.batch_size}: training with batches of {batch} (--batch-size)",
                      stacklevel=2)
        return dataclasses.replace(self, train=dataclasses.replace(self.train, batch_size=batch))

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """A recorded run: `<out>/config.json`, or any file holding one."""
        path = Path(path)
        if path.is_dir():
            path = path / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no run config at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DalleError(f"{path} is not a run config: {e}") from None
        return cls.from_dict(data)

    def record(self) -> Path:
        """Write this run to `<out>/config.json` (atomically) and return its path."""
        path = Path(self.out) / RUN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (self.to_json() + "\n").encode())
        return path


@dataclasses.dataclass(frozen=True)
class VAERun(RunConfig):
    """Stage 1: a dVAE trained on an image-caption folder or shards (paper §2.1, appendix A.2).

    `max_crop` > 0 trains on random square crops removing up to that fraction of the side
    (appendix A.2); 0 suits data whose objects touch the edges, such as shapes.
    """

    model: VAEConfig = dataclasses.field(default_factory=VAEConfig.small)
    train: TrainConfig = VAE_TRAINING
    max_crop: float = 0.0

    model_class: ClassVar[type[JSONConfig]] = VAEConfig

    @classmethod
    def follow_settings(cls, settings: dict[str, Any], overrides: dict[str, Any],
                        from_preset: bool) -> None:
        # The Gumbel temperature anneals over the whole run and the KL weight ramps over its
        # first half (at most the paper's 5,000 updates), unless set: a preset's schedules are for
        # the paper's 150,000 steps, and a run given a new length takes schedules to match.
        if from_preset or "steps" in overrides:
            steps = settings["train"]["steps"]
            if "tau_steps" not in overrides:
                settings["model"]["tau_steps"] = steps
            if "kl_warmup_steps" not in overrides:
                settings["model"]["kl_warmup_steps"] = min(5000, steps // 2)


@dataclasses.dataclass(frozen=True)
class PriorRun(RunConfig):
    """Stage 2: the prior trained on pre-tokenised codes (`dalle encode-dataset`; paper §2.2, B.2).

    `data` and `val_data` are codes directories; `tokenizer` the BPE tokenizer's directory. With
    probability `caption_drop` a caption is replaced by pads, which classifier-free guidance needs.
    `vae`, the dVAE that made the codes, lets the run draw sample grids every `sample_every` steps
    (a few training captions: the real image, then the prior's samples). `attention` is the
    backend that computes the layouts (`Prior.set_attention`): a speed choice, the same model.
    """

    tokenizer: str = ""
    val_data: str | None = None
    vae: str | None = None
    model: PriorConfig = dataclasses.field(default_factory=PriorConfig.small)
    train: TrainConfig = PRIOR_TRAINING
    caption_drop: float = 0.1
    attention: str = "auto"

    model_class: ClassVar[type[JSONConfig]] = PriorConfig
    needs: ClassVar[tuple[str, ...]] = ("data", "out", "tokenizer")
    derived: ClassVar[tuple[str, ...]] = ("text_vocab_size", "text_length", "codebook_size",
                                          "grid_size")

    def __post_init__(self) -> None:
        super().__post_init__()
        from dalle.prior import Attention

        if self.attention not in Attention.BACKENDS:
            raise DalleError(f"unknown attention backend {self.attention!r} (--attention); "
                             f"expected one of {', '.join(Attention.BACKENDS)}")

    def fitted(self) -> PriorRun:
        from dalle.data.codes import CodesDataset
        from dalle.text import TextTokenizer

        bpe = TextTokenizer.from_pretrained(self.tokenizer).config
        index = CodesDataset(self.data).index
        return dataclasses.replace(self, model=dataclasses.replace(
            self.model, text_vocab_size=bpe.text_vocab_size, text_length=bpe.text_length,
            codebook_size=index["codebook_size"], grid_size=index["grid"]))


@dataclasses.dataclass(frozen=True)
class CLIPRun(RunConfig):
    """The contrastive model that reranks samples (paper §2.6), on an image-caption folder or
    shards. `max_crop` is the largest fraction of the side a random crop removes (no flips);
    `hard_negatives` adds word-swapped captions of each sample as negatives (folders only)."""

    tokenizer: str = ""
    val_data: str | None = None
    model: CLIPConfig = dataclasses.field(default_factory=CLIPConfig.small)
    train: TrainConfig = CLIP_TRAINING
    max_crop: float = 0.1
    hard_negatives: bool = True

    model_class: ClassVar[type[JSONConfig]] = CLIPConfig
    needs: ClassVar[tuple[str, ...]] = ("data", "out", "tokenizer")
    derived: ClassVar[tuple[str, ...]] = ("text_vocab_size", "text_length")

    def fitted(self) -> CLIPRun:
        from dalle.text import TextTokenizer

        bpe = TextTokenizer.from_pretrained(self.tokenizer).config
        return dataclasses.replace(self, model=dataclasses.replace(
            self.model, text_vocab_size=bpe.text_vocab_size, text_length=bpe.text_length))
