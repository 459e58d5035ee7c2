"""Zero-shot composition on real pictures: does a pipeline trained on a `dalle data emoji` set draw
an (emoji, style) pair that it never saw, and the pairs that it did see?

For each pair the pipeline draws one image (the best of `candidates` by its CLIP), and the true
picture is ranked among every real picture of that style, train and held out, by the distance
of 16x16 colour thumbnails: a feature that is not the project's CLIP, so that a pipeline is not
judged by its own reranker, and one that ranks the dVAE's reconstructions of emoji first, where
Inception pool features do not (docs/results.md). Two numbers come with each table:

* the ceiling: the dVAE's reconstruction of the true picture, ranked the same way (what the
  pipeline could reach through its own image tokens);
* the reference: the same emoji's picture in another style (right object, wrong style), which a
  drawing must beat to show that it drew the style as well as the object.

With two or more styles in the data, a small colour CNN trained on the training pictures' styles
(`dalle.evaluate.classifier`, 32 px) says whether each drawing is in the style asked for; its
accuracy on the real pictures of the same pairs comes with it (for held-out pairs, pictures it
never saw).

The pairs are spread over the sorted file names of each split (skin-tone variants left out), so
the same data gives the same pairs. With an output folder, `held-out.png` and `seen.png` show
each style's pairs: the true pictures above, the drawings below.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dalle.data.captions import first_caption
from dalle.data.emoji import SKIN_TONES, STYLES
from dalle.data.folder import center_square, load_image, to_rgb
from dalle.errors import DalleError
from dalle.evaluate.classifier import ClassifierConfig, LabelClassifier, classifier_input, train_classifier
from dalle.pipeline import DallePipeline
from dalle.utils import captioned, image_grid

THUMBNAIL = 16
TOP = 5
PICTURE_COLUMNS = 10  # pairs per row of held-out.png and seen.png
STYLE_EPOCHS = 12  # the style classifier's passes over the training pictures (docs/design.md)
SPLITS = {"held-out": "test-zero-shot", "seen": "train"}


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> (N, 3 * 16 * 16): each side averaged down to 16."""
    return F.adaptive_avg_pool2d(images.float(), THUMBNAIL).flatten(1)


def ranks(queries: torch.Tensor, pictures: torch.Tensor, true: list[int]) -> list[int]:
    """The rank (1 = nearest) of picture `true[i]` among `pictures` by the thumbnail distance to
    query i; ties count against the true picture."""
    distance = torch.cdist(thumbnails(queries), thumbnails(pictures))
    own = distance[torch.arange(len(true)), torch.tensor(true)]
    return [int(n) for n in (distance <= own[:, None]).sum(dim=1)]


def _style_of(stem: str) -> str | None:
    return next((style for style in STYLES if stem.endswith(f"-{style}")), None)


def _pictures(paths: list[Path], size: int) -> torch.Tensor:
    """The images at `paths` as (N, 3, size, size) in [0, 1], read as training reads them."""
    pixels = np.stack([np.asarray(center_square(to_rgb(load_image(p)), size)) for p in paths])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float() / 255


def style_classifier(by_style: dict[str, torch.Tensor], seed: int = 0) -> LabelClassifier:
    """A colour CNN telling apart the styles of `by_style` (classes in its order), trained on
    their pictures (N, 3, H, W) at 32 px."""
    config = ClassifierConfig(n_classes=len(by_style), image_size=32, channels=3)
    images = torch.cat([classifier_input(pictures, config) for pictures in by_style.values()])
    labels = torch.cat([torch.full((len(pictures),), label)
                        for label, pictures in enumerate(by_style.values())])
    return train_classifier(images, labels, config, epochs=STYLE_EPOCHS, seed=seed)


def _pairs(files: list[Path], count: int) -> list[Path]:
    """`count` files spread evenly over the sorted list, skin-tone variants left out."""
    plain = [f for f in files if not any(f"-{tone.lower()}" in f.stem for tone in SKIN_TONES)]
    if count >= len(plain):
        return plain
    return [plain[i * len(plain) // count] for i in range(count)]


def evaluate_emoji(pipeline: DallePipeline, data: str | Path, out: str | Path | None = None, *,
                   pairs: int = 25, styles: list[str] | None = None, candidates: int = 16,
                   seed: int = 0, **kwargs: Any) -> dict[str, dict[str, float]]:
    """For `pairs` (emoji, style) pairs of each of `data`'s splits per style (`styles`: all that
    `data` holds), draw one image each and rank its true picture (module docstring). Returns
    {"held-out" / "seen": {metric: value}} and, with `out`, writes it to `out`/results.json."""
    if pairs < 1:
        raise DalleError(f"pairs must be at least 1, got {pairs}")
    unknown = [s for s in styles or () if s not in STYLES]
    if unknown:
        raise DalleError(f"unknown emoji style {', '.join(unknown)}; choose from {', '.join(STYLES)}")
    root = Path(data)
    size = pipeline.vae.config.image_size
    files = {split: sorted((root / folder).glob("*.png")) for split, folder in SPLITS.items()}
    by_style: dict[str, list[Path]] = {}
    for path in files["seen"] + files["held-out"]:
        style = _style_of(path.stem)
        if style is not None:
            by_style.setdefault(style, []).append(path)
    chosen = styles or [s for s in STYLES if s in by_style]
    missing = [s for s in chosen if s not in by_style]
    if not by_style or missing:
        raise DalleError(f"{root} has no emoji pictures of {', '.join(missing) or 'any style'} in "
                         f"train/ or test-zero-shot/: give --data a `dalle data emoji` folder")
    # Each style's pictures are read once: ranked against for both splits, and the classifier's
    # training set (the train/ ones of every style in `data`, asked for or not).
    pictures = {style: _pictures(paths, size) for style, paths in by_style.items()}
    stems = {path.stem: (style, index) for style, paths in by_style.items()
             for index, path in enumerate(paths)}
    judge = None
    if len(by_style) > 1:
        judge = style_classifier({style: pictures[style][[p.parent.name == SPLITS["seen"] for p in paths]]
                                  for style, paths in by_style.items()}, seed)
    labels = {style: index for index, style in enumerate(by_style)}
    results: dict[str, dict[str, float]] = {}
    for split in SPLITS:
        drawn, ceiling, reference = [], [], []
        rows, row_captions = [], []
        right, real_right = 0, 0
        for style in chosen:
            asked = _pairs([p for p in files[split] if _style_of(p.stem) == style], pairs)
            if not asked:
                continue
            true = [stems[path.stem][1] for path in asked]
            captions = [first_caption(path.with_suffix(".txt").read_text(encoding="utf-8"))
                        for path in asked]
            generations = pipeline(captions, images=1, candidates=candidates, seed=seed, **kwargs)
            images = torch.cat([g.images for g in generations]).float().cpu()
            drawn += ranks(images, pictures[style], true)
            for start in range(0, len(asked), PICTURE_COLUMNS):
                shown = slice(start, start + PICTURE_COLUMNS)
                rows.append(image_grid(torch.cat([pictures[style][true][shown], images[shown]]),
                                       columns=len(true[shown])))
                row_captions.append(f"{style}: true pictures above, drawn below")
            if judge is not None:
                right += int((judge.predict(images) == labels[style]).sum())
                real_right += int((judge.predict(pictures[style][true]) == labels[style]).sum())
            real = pictures[style][true].to(pipeline.device)
            ceiling += ranks(pipeline.vae.decode(pipeline.vae.encode(real)).cpu(), pictures[style], true)
            for path, index in zip(asked, true):
                code = path.stem[: -len(style) - 1]
                other = next((stems[f"{code}-{s}"] for s in STYLES
                              if s != style and f"{code}-{s}" in stems), None)
                if other is not None:
                    reference += ranks(pictures[other[0]][other[1]][None], pictures[style], [index])
        if not drawn:
            continue
        results[split] = {"pairs": len(drawn), "candidates": candidates,
                          **_summary("drawn", drawn), **_summary("ceiling", ceiling),
                          **_summary("reference", reference)}
        if judge is not None:
            results[split].update(style_accuracy=right / len(drawn),
                                  style_accuracy_real=real_right / len(drawn))
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            captioned(rows, row_captions).save(Path(out) / f"{split}.png")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _summary(name: str, found: list[int]) -> dict[str, float]:
    if not found:
        return {}
    return {f"{name}_top1": sum(r == 1 for r in found) / len(found),
            f"{name}_top{TOP}": sum(r <= TOP for r in found) / len(found),
            f"{name}_median_rank": float(statistics.median(found))}


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """The results as a table: a row per split and image (drawn, ceiling, reference), with the
    style accuracy of the drawn images and of the real ones when it was measured."""
    lines = [f"| pairs | image | top-1 | top-{TOP} | median rank | style right |",
             "|---|---|---|---|---|---|"]
    for split, metrics in results.items():
        style = {"drawn": metrics.get("style_accuracy"), "ceiling": None,
                 "reference": None, "real": metrics.get("style_accuracy_real")}
        for name in ("drawn", "ceiling", "reference"):
            if f"{name}_top1" in metrics:
                accuracy = style[name]
                lines.append(f"| {split} ({metrics['pairs']:.0f}) | {name} | "
                             f"{metrics[f'{name}_top1']:.0%} | {metrics[f'{name}_top{TOP}']:.0%} | "
                             f"{metrics[f'{name}_median_rank']:.0f} | "
                             f"{'' if accuracy is None else f'{accuracy:.0%}'} |")
        if style["real"] is not None:
            lines.append(f"| {split} ({metrics['pairs']:.0f}) | the true pictures | | | | "
                         f"{style['real']:.0%} |")
    return "\n".join(lines)
