"""Training the text tokenizer: byte-level BPE learned on a caption corpus (paper §2.2)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from dalle.data.folder import read_captions
from dalle.text import TextTokenizer


def train_tokenizer(data: Sequence[str | Path], out: str | Path, *, bpe_vocab_size: int = 16_384,
                    text_length: int = 256, bpe_dropout: float = 0.1) -> TextTokenizer:
    """Learn BPE on the captions of `data` (folders: every .txt in them; text files: one caption
    per line) and save it to `out`. `bpe_vocab_size` is an upper bound: a small corpus gives fewer
    merges, and the tokenizer's config records how many it produced."""
    captions = itertools.chain.from_iterable(read_captions(path) for path in data)
    tokenizer = TextTokenizer.train(captions, bpe_vocab_size, text_length, bpe_dropout)
    tokenizer.save_pretrained(out)
    return tokenizer
