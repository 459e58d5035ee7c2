"""`dalle finetune`: adapt a trained pipeline to a few new captioned pictures in minutes.

The prior learns the new pictures' codes (the base's dVAE encodes them; its tokenizer encodes any
caption, new words through BPE), by LoRA adapters on its attention and MLP projections (peft) or
in full. CLIP, which reranks, is adapted the same way when it cannot already tell the new pictures
apart by their captions. The result is an adapter directory (`dalle.adapter`) beside the base.

Twenty pictures are learnt in a hundred steps, and the base forgets what it drew as fast. So the
base first writes some captions of its own (the prior models the text stream too, paper §2.2:
given a word to start from it completes a caption like those it was trained on) and draws them;
these pairs are replayed with the new ones, as DreamBooth's prior preservation does with a
class's samples (Ruiz et al. 2023). Measured on the bundled `emoji` with 20 icons: without
replay `red apple, twitter style` became a red blob; see docs/finetune.md.

    OUT/adapter.json, prior/, clip/, README.md   the adapter
    OUT/training/plan.json                       base, data and settings: a rerun must match
    OUT/training/codes/, replay/                 the new pictures' codes, the replayed samples
    OUT/training/prior/, clip/                   the training runs (checkpoint, metrics, samples)

Every stage is skipped once done and an interrupted training run resumes from its checkpoint, so
running the same command again continues.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from dalle.adapter import ADAPTER_FILE, METHODS, TRAINING_DIR, AdapterConfig, save_lora, with_lora
from dalle.card import CARD_NAME, copy_notices, find_notices
from dalle.config import JSONConfig, TrainConfig
from dalle.data.codes import CodesDataset
from dalle.data.shards import ShardDataset
from dalle.data.sources import open_images
from dalle.errors import DalleError
from dalle.pipeline import SAMPLING_FILE, DallePipeline, resolve_pipeline
from dalle.prior import Prior
from dalle.text import TextTokenizer
from dalle.train.checkpoint import CHECKPOINT_NAME
from dalle.train.clip import CLIPLoss
from dalle.train.codes import encode_dataset, write_codes
from dalle.train.loop import Trainer
from dalle.train.prior import PriorLoss, sample_batch, sample_grid
from dalle.utils import atomic_write, ensure_writable_dir

PLAN_FILE = "plan.json"
# Below this share of its new pictures retrieved first by their own captions, CLIP is adapted
# ("auto"): a reranker that cannot tell them apart picks candidates at random.
CLIP_RETRIEVAL_NEEDED = 0.9


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(JSONConfig):
    """How to adapt a pipeline. `method`: the prior's, lora (adapters of `rank`, scaled by
    alpha / rank) or full; `replay`: pairs the base writes and draws to keep what it knew (0:
    none); `clip`: adapt CLIP auto (when its retrieval of the new pictures is below 90%), yes or
    no, by `clip_method`."""

    method: str = "lora"
    rank: int = 16
    alpha: float = 16.0
    replay: int = 120
    clip: str = "auto"
    clip_method: str = "full"  # CLIP is small (a tenth of the prior): fine-tuned whole by default
    caption_drop: float = 0.1  # trains the unconditional stream that guidance samples with
    # The prior's dropout while adapting. The replay loss distils the base, which predicts without
    # dropout; a model trained with its dropout on drifted away from the base on every caption
    # (measured: docs/finetune.md).
    dropout: float = 0.0
    # The adapted pipeline's guidance scale (None: the base's). Few new pictures make the
    # conditional and unconditional streams disagree, and guidance magnified that: with the base's
    # 2, fewer drawn icons were right and `red apple, twitter style` lost its apple (measured:
    # docs/finetune.md).
    guidance_scale: float | None = 1.0
    prior_train: TrainConfig = TrainConfig(
        steps=150, batch_size=40, lr=1e-3, warmup_steps=25, weight_decay=0.0, grad_clip=1.0,
        ema_decay=0.0, export="raw", log_every=10, sample_every=50, eval_every=0, checkpoint_every=25)
    clip_train: TrainConfig = TrainConfig(
        steps=600, batch_size=40, lr=1e-3, warmup_steps=30, betas=(0.9, 0.98), weight_decay=0.0,
        grad_clip=1.0, ema_decay=0.0, export="raw", log_every=10, sample_every=0, eval_every=0,
        checkpoint_every=25)

    def __post_init__(self) -> None:
        for name, method in (("method", self.method), ("clip_method", self.clip_method)):
            if method not in METHODS:
                raise DalleError(f"{name} must be one of {', '.join(METHODS)}, got {method!r}")
        if self.clip not in ("auto", "yes", "no"):
            raise DalleError(f"clip must be auto, yes or no, got {self.clip!r}")
        if self.rank < 1 or self.replay < 0:
            raise DalleError("rank must be positive and replay at least 0")
        if not 0 <= self.dropout < 1:
            raise DalleError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.guidance_scale is not None and self.guidance_scale < 1:
            raise DalleError(f"guidance_scale must be at least 1 (1 = off), got {self.guidance_scale}")

    @classmethod
    def presets(cls) -> dict[str, FinetuneConfig]:
        """`lora` (the default: minutes on a laptop CPU for the bundled pipelines), `full` (every
        weight, at a tenth of LoRA's rate), `quick` (a few steps: checks that everything runs)."""
        lora = cls()
        full = dataclasses.replace(lora, method="full",
                                   prior_train=dataclasses.replace(lora.prior_train, lr=1e-4))
        quick = dataclasses.replace(
            lora, replay=4,
            prior_train=dataclasses.replace(lora.prior_train, steps=4, warmup_steps=1, log_every=2,
                                            sample_every=0, checkpoint_every=2),
            clip_train=dataclasses.replace(lora.clip_train, steps=4, warmup_steps=1, log_every=2,
                                           checkpoint_every=2))
        return {"lora": lora, "full": full, "quick": quick}


def with_dropout(model: nn.Module, p: float) -> nn.Module:
    """`model` with every dropout layer's rate set to `p` (its config keeps the trained rate)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    return model


def caption_starts(tokenizer: TextTokenizer, count: int, generator: torch.Generator,
                   words: Sequence[str] = ()) -> torch.Tensor:
    """The first token of each caption the base writes (`write_captions`): a random whole word of
    the BPE vocabulary; every other one of `words` instead, those that are one token, if any."""
    vocabulary = torch.tensor([i for token, i in sorted(tokenizer.vocab.items()) if token.isalpha() and len(token) > 2])
    starts = vocabulary[torch.randint(len(vocabulary), (count,), generator=generator)]
    given = torch.tensor(sorted({ids[0] for ids in map(tokenizer.tokenize, words) if len(ids) == 1}), dtype=torch.long)
    if len(given):
        starts[::2] = given[torch.randint(len(given), (len(starts[::2]),), generator=generator)]
    return starts


@torch.no_grad()
def write_captions(prior: Prior, tokenizer: TextTokenizer, count: int, generator: torch.Generator,
                   words: Sequence[str] = ()) -> list[str]:
    """Captions the prior writes itself: each starts from a word (`caption_starts`), and the text
    stream (trained with weight 1/8, paper §2.2) continues it until it predicts a pad. The first
    position is never predicted, hence the given word."""
    c = tokenizer.config
    text = torch.arange(c.pad_id, c.pad_id + c.text_length + 1).repeat(count, 1)
    text[:, c.text_length] = c.start_of_image_id
    text[:, 0] = caption_starts(tokenizer, count, generator, words)
    codes = text.new_zeros(count, prior.config.image_tokens)
    device = prior.device
    for i in range(1, c.text_length):
        logits = prior(text.to(device), codes.to(device)).text_logits[:, i - 1].float().cpu()
        text[:, i] = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
    captions = [tokenizer.decode(row).strip() for row in text]
    # A caption is replayed as text, so keep those that encode back within the text length using
    # only characters the tokenizer knows (a half-written multi-byte character does not).
    return [caption for caption in captions if caption and not tokenizer.unknown_characters(caption)
            and len(tokenizer.tokenize(caption)) <= c.text_length]


def load_pictures(data: Path, image_size: int) -> list[dict[str, Any]]:
    """Every picture of a folder or shards, at the pipeline's image size, in a fixed order."""
    dataset = open_images(data, image_size)
    items = list(dataset) if isinstance(dataset, ShardDataset) else [dataset[i] for i in range(len(dataset))]
    report = getattr(dataset, "report", None)
    if not items:
        raise DalleError(f"{data} has no captioned pictures to fine-tune on"
                         + (f" ({report})" if report else ""))
    return [{"image": item["image"], "caption": item["caption"], "index": i} for i, item in enumerate(items)]


@torch.no_grad()
def clip_retrieval(pipe: DallePipeline, pictures: list[dict[str, Any]]) -> float:
    """The share of pictures whose own caption CLIP ranks first among the set's captions."""
    assert pipe.clip is not None
    images = torch.stack([p["image"] for p in pictures]).to(pipe.device)
    captions = [p["caption"] for p in pictures]
    unique = list(dict.fromkeys(captions))
    image = F.normalize(pipe.clip.encode_image(images).float(), dim=-1)
    text = F.normalize(pipe.clip.encode_text(pipe.tokenizer.encode_batch(unique).to(pipe.device)).float(), dim=-1)
    best = (image @ text.T).argmax(1).tolist()
    return sum(unique[j] == caption for j, caption in zip(best, captions)) / len(pictures)


class Tagged(Dataset):
    """A dataset's items with `replay` set: whether they are replayed pairs or new pictures."""

    def __init__(self, dataset: CodesDataset, replay: bool) -> None:
        self.dataset, self.replay = dataset, replay

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "replay": self.replay}


class ReplayLoss(PriorLoss):
    """The prior's loss on new pictures; on replayed pairs (and new pictures whose caption was
    dropped), the KL divergence of its predictions from the base's at every text and image
    position, weighted alike (distillation, Hinton et al. 2015, as in learning without
    forgetting, Li & Hoiem 2016). A drawn grid tells which code the base chose at a position, its
    distribution how likely it found each of the others.

    `reference` is the frozen base; None for LoRA, whose base is the model with its adapters off.
    """

    def __init__(self, tokenizer: TextTokenizer, seed: int, caption_drop: float,
                 reference: Prior | None) -> None:
        super().__init__(tokenizer, seed, caption_drop)
        self.reference = reference
        self.empty = tokenizer.encode("")  # a dropped caption's ids

    @torch.no_grad()
    def _base_logits(self, model: Any, text: torch.Tensor, codes: torch.Tensor) -> Any:
        inner = getattr(model, "module", model)
        if self.reference is not None:
            return self.reference(text, codes)
        inner.eval()  # the base's own predictions: no dropout
        try:
            with inner.disable_adapter():
                return inner(text, codes)
        finally:
            inner.train()

    def __call__(self, model: Any, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        codes, replay = batch["codes"].flatten(1), batch["replay"].to(batch["codes"].device)
        text = self.encode(batch["caption"], batch["index"], step).to(codes.device)
        out = model(text, codes)
        # A new picture whose caption was dropped is distilled like a replayed pair, so the
        # unconditional stream, which guidance subtracts, stays the base's: learnt from the few
        # new pictures, it bent every other caption's samples (measured: docs/finetune.md).
        unconditional = (text == self.empty.to(text.device)).all(1)
        replay = replay | unconditional
        config = _inner(model).config
        length = config.text_length
        text_ce = F.cross_entropy(out.text_logits.transpose(1, 2), text[:, 1:length], reduction="none").mean(1)
        image_ce = F.cross_entropy(out.image_logits.transpose(1, 2), codes, reduction="none").mean(1)
        text_loss, image_loss = text_ce.new_zeros(()), image_ce.new_zeros(())
        new = ~replay
        if new.any():
            text_loss, image_loss = text_ce[new].mean(), image_ce[new].mean()
        kl = text_ce.new_zeros(())
        if replay.any():
            base = self._base_logits(model, text[replay], codes[replay])

            def divergence(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
                return F.kl_div(logits.log_softmax(-1), reference.log_softmax(-1), log_target=True,
                                reduction="none").sum(-1).mean(1)

            kl = (config.text_loss_weight * divergence(out.text_logits[replay], base.text_logits)
                  + config.image_loss_weight * divergence(out.image_logits[replay], base.image_logits))
        fitted = config.text_loss_weight * text_ce + config.image_loss_weight * image_ce
        per_item = fitted.masked_scatter(replay, kl) if replay.any() else fitted
        metrics = {"text_loss": text_loss.detach(), "image_loss": image_loss.detach(),
                   "replay_kl": kl.mean().detach() if replay.any() else kl}
        return per_item.mean(), metrics


class Finetuning:
    """The stages of one fine-tuning run into `out`, each skipped once done (see the module)."""

    def __init__(self, base: str, data: Path, out: Path, config: FinetuneConfig, *,
                 device: str = "auto", overwrite: bool = False, echo: Callable[[str], None] = print) -> None:
        self.base, self.data, self.out, self.config, self.echo = base, data, out, config, echo
        self.training = out / TRAINING_DIR
        plan = json.loads(json.dumps({"base": base, "data": str(data.resolve()), "config": config.to_dict()}))
        plan_path = self.training / PLAN_FILE
        if not plan_path.is_file() and out.is_dir() and any(out.iterdir()):
            # Never replaced, even with --overwrite: it is not ours to delete.
            raise DalleError(f"{out} exists and is not a fine-tuning run; choose another --out")
        if plan_path.is_file() and overwrite:
            shutil.rmtree(out)
        elif plan_path.is_file() and json.loads(plan_path.read_text()) != plan:
            raise DalleError(f"{out} holds a fine-tuning of other data, base or settings; "
                             "choose another --out, or pass --overwrite to replace it")
        if not data.exists():
            raise FileNotFoundError(f"no pictures at {data}: give --data a folder or shards")
        # The base loads before anything is written, so a wrong name leaves no run behind.
        self.pipe = DallePipeline.from_pretrained(base, device=device)
        self.device = device
        ensure_writable_dir(self.training)
        atomic_write(plan_path, (json.dumps(plan, indent=2) + "\n").encode())

    def train_config(self, train: TrainConfig, items: int) -> TrainConfig:
        """The stage's settings on this device, its batch no larger than the data."""
        return dataclasses.replace(train, batch_size=min(train.batch_size, items), device=self.device)

    def codes(self, pictures: list[dict[str, Any]]) -> CodesDataset:
        """The new pictures through the base's dVAE."""
        folder = self.training / "codes"
        if not (folder / "index.json").is_file():
            encode_dataset(self.pipe.vae, iter(pictures), folder, total=len(pictures), show_progress=False)
        return CodesDataset(folder)

    def replay(self, pictures: list[dict[str, Any]]) -> CodesDataset | None:
        """Pairs the base writes and draws itself (module docstring), with its sampling defaults;
        half start from the new captions' words, what the new pictures would otherwise take over."""
        if not self.config.replay:
            return None
        folder = self.training / "replay"
        if not (folder / "index.json").is_file():
            generator = torch.Generator().manual_seed(self.config.prior_train.seed)
            words = sorted({w for p in pictures for w in p["caption"].replace(",", " ").split() if len(w) > 2})
            captions = write_captions(self.pipe.prior, self.pipe.tokenizer, self.config.replay, generator, words)
            if not captions:
                self.echo("replay: the base wrote no caption its tokenizer reads back; nothing is replayed")
                return None
            drawn = self.pipe(captions, images=1, seed=self.config.prior_train.seed)
            write_codes(torch.stack([g.codes[0] for g in drawn]), captions, self.pipe.vae, folder)
            self.echo(f"replay: the base wrote and drew {len(captions)} captions, e.g. "
                      + "; ".join(repr(c) for c in captions[:3]))
        return CodesDataset(folder)

    def _adapted_model(self, model: Any, method: str) -> Any:
        c = self.config
        torch.manual_seed(c.prior_train.seed)  # LoRA's A matrices start random
        return with_lora(model, c.rank, c.alpha) if method == "lora" else model

    def _save(self, model: Any, part: str, method: str) -> None:
        target = self.out / part
        if method == "lora":
            save_lora(model, target)
        else:  # bf16 halves the file, as the bundled pipelines store theirs; loading casts back
            model.save_pretrained(target, dtype=torch.bfloat16)

    def prior(self, codes: CodesDataset, replay: CodesDataset | None) -> None:
        if (self.out / "prior").is_dir():
            return
        c = self.config
        # The new pictures are repeated to fill about half of each batch, however many are replayed.
        repeats = 1 if replay is None else max(1, round(len(replay) / len(codes)))
        parts = [Tagged(codes, False)] * repeats + ([Tagged(replay, True)] if replay is not None else [])
        dataset: ConcatDataset[dict[str, Any]] = ConcatDataset(parts)
        train = self.train_config(c.prior_train, len(dataset))
        model = self._adapted_model(with_dropout(self._base_part("prior"), c.dropout), c.method)
        reference = None
        if c.method == "full":
            reference = self._base_part("prior").eval().requires_grad_(False).to(self.pipe.device)
        vae = self.pipe.vae
        self._train("prior", c.method, model, dataset, train,
                    ReplayLoss(self.pipe.tokenizer, train.seed, c.caption_drop, reference),
                    sample_fn=lambda m, batch: sample_grid(_inner(m), vae, batch),
                    sample_batch=sample_batch(self.pipe.tokenizer, codes))

    def _train(self, part: str, method: str, model: Any, dataset: Dataset, train: TrainConfig,
               loss: Any, **samples: Any) -> None:
        """Train `model` in training/<part> (resuming a checkpoint there) and save it as the
        adapter's <part>."""
        run = self.training / part
        checkpoint = (run / CHECKPOINT_NAME).is_file()
        # A run interrupted before its first checkpoint starts over.
        trainer = Trainer(model, dataset, train, run, loss, resume=checkpoint,
                          overwrite=run.exists() and not checkpoint, **samples)
        try:
            trained = trainer.fit()
        finally:
            trainer.close()
        self._save(trained, part, method)

    def clip(self, pictures: list[dict[str, Any]], codes: CodesDataset,
             replay: CodesDataset | None) -> str | None:
        """Adapt CLIP if asked, or if "auto" and it cannot tell the new pictures apart; returns
        how it was adapted (None: not)."""
        c = self.config
        if self.pipe.clip is None or c.clip == "no":
            return None
        if (self.out / "clip").is_dir():
            return c.clip_method
        retrieval = clip_retrieval(self.pipe, pictures)
        self.echo(f"CLIP retrieves {retrieval:.0%} of the new pictures by their captions"
                  + (" (it is adapted below 90%)" if c.clip == "auto" else ""))
        if c.clip == "auto" and retrieval >= CLIP_RETRIEVAL_NEEDED:
            return None
        # CLIP ranks the dVAE's decodes, not pictures: it learns each new picture both as it is
        # and as the dVAE draws it, and the replayed pairs as drawn, to keep ranking those too.
        pairs = [(p["image"], p["caption"]) for p in pictures] + self._drawn(codes)
        if replay is not None:
            pairs += self._drawn(replay)
        items = [{"image": image, "caption": caption, "index": i} for i, (image, caption) in enumerate(pairs)]
        train = self.train_config(c.clip_train, len(items))
        model = self._adapted_model(self._base_part("clip"), c.clip_method)
        self._train("clip", c.clip_method, model, _Items(items), train,
                    CLIPLoss(self.pipe.tokenizer, train.seed, max_crop=0.1))
        return c.clip_method

    @torch.no_grad()
    def _drawn(self, dataset: CodesDataset) -> list[tuple[torch.Tensor, str]]:
        """A codes dataset's pairs with their pictures as the base's dVAE draws them."""
        codes = torch.stack([dataset[i]["codes"] for i in range(len(dataset))])
        images = self.pipe.vae.decode(codes.to(self.pipe.device)).float().cpu()
        return list(zip(images, dataset.captions))

    def _base_part(self, part: str) -> Any:
        """A fresh float32 copy of the base's part to train (the loaded pipeline keeps its own)."""
        model = getattr(self.pipe, part)
        fresh = type(model)(model.config)
        fresh.load_state_dict(model.state_dict())
        return fresh

    def run(self) -> Path:
        pictures = load_pictures(self.data, self.pipe.vae.config.image_size)
        unknown = self.pipe.tokenizer.unknown_characters(" ".join(p["caption"] for p in pictures))
        if unknown:
            raise DalleError(f"the captions use characters the base's tokenizer has never seen "
                             f"({''.join(unknown)!r}); its BPE cannot encode them")
        self.echo(f"fine-tuning {self.base} on {len(pictures)} pictures from {self.data} "
                  f"({self.config.method}, {self.config.prior_train.steps} prior steps)")
        codes = self.codes(pictures)
        replay = self.replay(pictures)
        self.prior(codes, replay)
        clip = self.clip(pictures, codes, replay)
        config = AdapterConfig(base=self.base, prior=self.config.method, clip=clip)
        if self.config.guidance_scale is not None:
            self.pipe.sampling.updated(guidance_scale=self.config.guidance_scale).save(self.out / SAMPLING_FILE)
        copy_notices(find_notices(resolve_pipeline(self.base)), self.out)
        atomic_write(self.out / CARD_NAME, adapter_card(self, config, len(pictures)).encode())
        config.save(self.out / ADAPTER_FILE)  # last: its presence marks a finished adapter
        return self.out


class _Items(Dataset):
    """A list of {"image", "caption", "index"} items as a dataset."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _inner(model: Any) -> Prior:
    """The prior inside a DDP or peft wrapper, LoRA layers and all (what sampling needs)."""
    model = getattr(model, "module", model)
    return cast(Prior, model.get_base_model() if hasattr(model, "get_base_model") else model)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def adapter_card(run: Finetuning, config: AdapterConfig, pictures: int) -> str:
    """The adapter's model card: base, data, settings, sizes, and the base's licence terms."""
    from dalle.hub import parse_hub_id, with_front_matter

    c = run.config
    parts = [f"prior: {config.prior}"] + ([f"CLIP: {config.clip}"] if config.clip else ["CLIP: the base's"])
    lines = [
        f"# {run.out.name}: {run.base} fine-tuned on {pictures} pictures",
        "",
        f"An adapter made by `dalle finetune --pipeline {run.base} --data {run.data} --out {run.out}`: "
        f"load it with `DallePipeline.from_pretrained(\"{run.out}\")` or `dalle generate --pipeline {run.out}`, "
        f"and make a standalone pipeline with `dalle merge {run.out} --out DIR`.",
        "",
        "| | |", "|---|---|",
        f"| base pipeline | `{run.base}` |",
        f"| data | {pictures} pictures from `{run.data}` |",
        f"| adapted | {', '.join(parts)} |",
        f"| LoRA | rank {c.rank}, alpha {c.alpha:g} on {', '.join('`' + t + '`' for t in ('qkv', 'out', 'mlp.0', 'mlp.2'))} |"
        if c.method == "lora" else "| fine-tuning | every weight |",
        f"| prior training | {c.prior_train.steps} steps, batch {c.prior_train.batch_size}, lr {c.prior_train.lr:g} |",
        f"| replayed pairs | {c.replay} captions the base wrote and drew |",
        f"| adapter size | {_size(run.out / 'prior') / 1e6:.2f} MB prior"
        + (f", {_size(run.out / 'clip') / 1e6:.2f} MB CLIP" if config.clip else "") + " |",
        "",
        "The base pipeline's licence and attribution (copied beside this card, where it has them) "
        "apply to this adapter too; the new pictures' terms are their owner's.",
        "",
    ]
    metadata: dict[str, Any] = {"tags": ["lora"] if c.method == "lora" else ["fine-tuned"]}
    hub = parse_hub_id(run.base)
    if hub is not None and not Path(run.base).exists():
        metadata["base_model"] = hub[0]
    return with_front_matter("\n".join(lines), metadata)


def finetune(base: str, data: str | Path, out: str | Path, config: FinetuneConfig | None = None, *,
             device: str = "auto", overwrite: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Adapt the pipeline `base` (a bundled name, a folder or a Hub id) to the captioned pictures
    in `data` (a folder or shards); writes the adapter directory `out` (see the module)."""
    run = Finetuning(base, Path(data), Path(out), config or FinetuneConfig(), device=device,
                     overwrite=overwrite, echo=echo)
    return run.run()
