"""Caption variants: a caption file may hold several captions of its picture, one per line.

The first line is the picture's caption: the one shown, evaluated, validated on and matched
against other captions. Training draws one line per sample (`pick_caption`), so a picture can be
named plainly in one epoch and by a richer description in the next, e.g. `dalle data emoji
--tags 4` writes `red apple, twitter style` and `red apple: diet, food, fruit, health, twitter
style`.
Items of every image or code dataset carry both: `caption` (the first line) and `variants` (the
whole text, one caption per line).
"""

from __future__ import annotations

import random


def caption_variants(text: str) -> list[str]:
    """The captions in a caption file's text: its non-empty lines, stripped, in order."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def first_caption(text: str) -> str:
    """The picture's caption: the first non-empty line of its caption text ("" if none)."""
    variants = caption_variants(text)
    return variants[0] if variants else ""


def pick_caption(text: str, rng: random.Random) -> str:
    """The caption one training sample uses: a line of `text` drawn from `rng`. A single caption
    is returned without drawing, so single-caption data trains exactly as it did before variants."""
    variants = caption_variants(text)
    return rng.choice(variants) if len(variants) > 1 else (variants[0] if variants else "")


def caption_fields(text: str) -> dict[str, str]:
    """A dataset item's caption fields for the caption text `text`."""
    return {"caption": first_caption(text), "variants": text}
