"""Byte-pair encoding of captions (paper §2.2): lower case, a fixed length, one pad per position.

Training, normalisation, pre-tokenisation and plain encoding are Hugging Face `tokenizers`
(byte-level BPE, so every string encodes and nothing is unknown). A caption becomes `text_length`
ids, where each empty position i holds its own pad id `pad_id + i`, followed by the start-of-image
id. An empty caption is all pads: the unconditional prompt that classifier-free guidance uses.

BPE dropout (Provilkov et al. 2020; paper: 10%, training only) re-runs the same merge table with
each candidate merge skipped with probability p at every step. It is done here rather than by the
library because the library draws dropout from an unseeded thread RNG, which would break exact
resume; here it is a function of the `random.Random` the caller passes.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from dalle.config import TokenizerConfig
from dalle.errors import DalleError
from dalle.hub import resolve
from dalle.utils import atomic_write, ensure_writable_dir

TOKENIZER_NAME = "tokenizer.json"
CONFIG_NAME = "config.json"


def clean_caption(caption: str | bytes) -> str:
    """Validate a caption and collapse its whitespace; bytes must be UTF-8."""
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DalleError(f"caption is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(caption, str):
        raise TypeError(f"a caption must be str or bytes, not {type(caption).__name__}")
    try:
        caption.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DalleError(f"caption holds a character UTF-8 cannot encode at {e.start}") from None
    return " ".join(caption.split())


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


class TextTokenizer:
    """Lower-cased byte-level BPE with per-position pads and a start-of-image id."""

    def __init__(self, tokenizer: Tokenizer, config: TokenizerConfig) -> None:
        if tokenizer.get_vocab_size() != config.bpe_vocab_size:
            raise DalleError(f"tokenizer.json has {tokenizer.get_vocab_size()} tokens but the "
                             f"config says bpe_vocab_size {config.bpe_vocab_size}")
        self.tokenizer, self.config = tokenizer, config
        model = json.loads(tokenizer.to_str())["model"]
        self.vocab: dict[str, int] = model["vocab"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}

    @classmethod
    def train(cls, captions: Iterable[str], bpe_vocab_size: int = 16_384, text_length: int = 256,
              bpe_dropout: float = 0.1) -> TextTokenizer:
        """Learn BPE merges from a caption corpus (deterministic for a given corpus)."""
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = _normalizer()
        normalizer = _normalizer()  # a second instance: the tokenizer is locked while it trains
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=bpe_vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        seen, alphabet = 0, set[str]()

        def corpus() -> Iterable[str]:
            nonlocal seen
            for caption in captions:
                seen += 1
                caption = clean_caption(caption)
                alphabet.update(normalizer.normalize_str(caption))
                yield caption

        tokenizer.train_from_iterator(corpus(), trainer)
        if not seen:
            raise DalleError("cannot train a tokenizer on an empty caption corpus")
        config = TokenizerConfig(bpe_vocab_size=tokenizer.get_vocab_size(), text_length=text_length,
                                 bpe_dropout=bpe_dropout, alphabet="".join(sorted(alphabet)))
        return cls(tokenizer, config)

    def unknown_characters(self, caption: str | bytes) -> list[str]:
        """Characters of a caption that never occurred in the training captions (in order)."""
        if not self.config.alphabet:
            return []
        known = set(self.config.alphabet) | {" "}
        text = self.tokenizer.normalizer.normalize_str(clean_caption(caption))
        return [ch for ch in dict.fromkeys(text) if ch not in known]

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = ensure_writable_dir(directory)
        atomic_write(directory / TOKENIZER_NAME, self.tokenizer.to_str().encode())
        atomic_write(directory / CONFIG_NAME, (self.config.to_json() + "\n").encode())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, subfolder: str | None = None) -> TextTokenizer:
        """Load from `directory`, or a Hub id (`owner/name[@revision]`, with `subfolder`, e.g.
        "tokenizer" of a pipeline) as the models do."""
        directory = resolve(directory, subfolder)
        path = directory / TOKENIZER_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory} has no {TOKENIZER_NAME}; train one with "
                                    "`dalle train-tokenizer`")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on a malformed file
            raise DalleError(f"{path} is not a valid tokenizer file: {e}") from None
        return cls(tokenizer, TokenizerConfig.load(directory / CONFIG_NAME))

    def mismatches(self, text_vocab_size: int, text_length: int, model: str) -> list[str]:
        """How a model reading `text_vocab_size` ids of `text_length` text positions disagrees
        with this tokenizer, one phrase per problem (empty when they match)."""
        t = self.config
        problems = []
        if t.text_vocab_size != text_vocab_size:
            problems.append(f"the tokenizer has {t.text_vocab_size} ids but {model} expects "
                            f"text_vocab_size {text_vocab_size}")
        if t.text_length != text_length:
            problems.append(f"the tokenizer's text length is {t.text_length}, {model}'s {text_length}")
        return problems

    def __len__(self) -> int:
        """Every id this tokenizer can produce: BPE tokens, pads and start-of-image."""
        return self.config.text_vocab_size

    def _merge(self, word: str, rng: random.Random, p: float) -> list[str]:
        symbols = list(word)
        while len(symbols) > 1:
            best_rank, best_i = None, -1
            for i in range(len(symbols) - 1):
                rank = self.merge_ranks.get((symbols[i], symbols[i + 1]))
                if rank is None or rng.random() < p:
                    continue
                if best_rank is None or rank < best_rank:
                    best_rank, best_i = rank, i
            if best_rank is None:
                break
            symbols[best_i : best_i + 2] = [symbols[best_i] + symbols[best_i + 1]]
        return symbols

    def tokenize(self, caption: str | bytes, rng: random.Random | None = None) -> list[int]:
        """BPE ids of a caption, untruncated; with `rng`, BPE dropout at `config.bpe_dropout`."""
        caption = clean_caption(caption)
        if rng is None or self.config.bpe_dropout == 0:
            return self.tokenizer.encode(caption).ids
        normalized = self.tokenizer.normalizer.normalize_str(caption)
        words = self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)
        p = self.config.bpe_dropout
        return [self.vocab[s] for word, _ in words for s in self._merge(word, rng, p)]

    def encode(self, caption: str | bytes, rng: random.Random | None = None) -> torch.Tensor:
        """`text_length` ids (BPE, then each position's own pad) plus start-of-image.

        A caption longer than the text length is truncated with a warning saying by how much.
        Pass `rng` only when encoding for training: it turns on BPE dropout (except for a caption
        that dropout would make too long).
        """
        ids = self.tokenize(caption, rng)
        length = self.config.text_length
        if rng is not None and len(ids) > length:
            # BPE dropout is an augmentation: where it would push a caption past the text length,
            # the caption is encoded without it rather than lose its last words.
            ids = self.tokenize(caption)
        if len(ids) > length:
            warnings.warn(f"caption of {len(ids)} tokens truncated to the text length {length} "
                          f"({len(ids) - length} tokens dropped): {str(caption)[:60]!r}",
                          stacklevel=2)
            ids = ids[:length]
        pads = range(self.config.pad_id + len(ids), self.config.pad_id + length)
        return torch.tensor([*ids, *pads, self.config.start_of_image_id], dtype=torch.long)

    def encode_batch(self, captions: Sequence[str | bytes],
                     rngs: Sequence[random.Random] | None = None) -> torch.Tensor:
        """(B, text_length + 1) ids; `rngs`, one per caption, turn on BPE dropout."""
        if rngs is not None and len(rngs) != len(captions):
            raise DalleError(f"{len(rngs)} generators for {len(captions)} captions")
        if not captions:
            return torch.empty(0, self.config.text_length + 1, dtype=torch.long)
        return torch.stack([self.encode(c, None if rngs is None else rngs[i])
                            for i, c in enumerate(captions)])

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The caption text of an id sequence; pads and start-of-image are dropped."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.tokenizer.decode([i for i in ids if 0 <= i < self.config.bpe_vocab_size]).strip()
