"""Zero-shot evaluation of generated images on `shapes` (docs/shapes.md rule 6, paper §3).

For each prompt of a split, draw N candidates; judge the first sample and CLIP's best of N with
the docs/shapes.md parser; report full-match and per-attribute accuracy for both. Generation goes
through `DallePipeline` with the whole list of prompts, whose candidates share the prior's
batches, so that evaluation runs at sampling speed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dalle.data.captions import first_caption
from dalle.errors import DalleError
from dalle.evaluate.shapes import METRICS, evaluate
from dalle.pipeline import DallePipeline
from dalle.utils import ensure_writable_dir, image_grid, to_pil

# Candidates sampled per batch. Part of what a seed reproduces: the random draws follow the
# batches, so another batch size gives other (equally good) samples.
BATCH_SIZE = 64


def split_prompts(folder: str | Path, limit: int | None = None) -> list[str]:
    """The captions of a shapes split folder, in file order (the first `limit`)."""
    files = sorted(Path(folder).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no captions (.txt files) in {folder}")
    return [first_caption(f.read_text(encoding="utf-8")) for f in files[:limit]]


def evaluate_split(pipeline: DallePipeline, prompts: list[str], candidates: int, *,
                   batch_size: int = BATCH_SIZE, **kwargs) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Accuracies of the first sample and of CLIP's best of `candidates`; also the images
    (first, best) per prompt as (P, 2, 3, H, W) for a grid. `kwargs` are the pipeline's
    sampling options (temperature, ..., seed)."""
    generations = pipeline(prompts, images=candidates, candidates=candidates, batch_size=batch_size,
                           **kwargs)
    first = torch.stack([g.images[g.indices.argmin()] for g in generations]).cpu()
    results = {"first": evaluate(to_pil(first), prompts)}
    best = first
    if pipeline.clip is not None and candidates > 1:
        best = torch.stack([g.images[0] for g in generations]).cpu()  # reranked: best first
        results[f"best_of_{candidates}"] = evaluate(to_pil(best), prompts)
    return results, torch.stack([first, best], 1)


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| split | images | n | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for split, by_kind in results.items():
        for kind, metrics in by_kind.items():
            cells = " | ".join("-" if math.isnan(metrics[m]) else f"{metrics[m]:.1%}" for m in METRICS)
            lines.append(f"| {split} | {kind.replace('_', ' ')} | {int(metrics['n'])} | {cells} |")
    return "\n".join(lines)


def evaluate_shapes(pipeline: DallePipeline, data: str | Path, out: str | Path, *,
                    splits: tuple[str, ...] = ("test-seen", "test-zero-shot"),
                    prompts: int | None = 200, candidates: int = 16, **kwargs) -> dict:
    """Run every split; write results.json, results.md and a grid per split into `out`."""
    out = ensure_writable_dir(out)
    sampling = {k: kwargs.pop(k, None) for k in ("temperature", "top_k", "top_p", "guidance_scale")}
    kwargs.update(pipeline.sampling.updated(**sampling).to_dict())
    results, settings = {}, {"candidates": candidates, "prompts": prompts, **kwargs}
    for split in splits:
        texts = split_prompts(Path(data) / split, prompts)
        results[split], pairs = evaluate_split(pipeline, texts, candidates, **kwargs)
        shown = pairs[:16].flatten(0, 1)  # first | best, side by side
        image_grid(shown, columns=8).save(out / f"{split}-first-and-best.png")
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": results},
                                                 indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table + "\n")
    return results


def label_of(caption: str) -> int:
    """The Fashion-MNIST class a caption names (captions are the class captions exactly)."""
    from dalle.data.fashion_mnist import CAPTIONS

    try:
        return CAPTIONS.index(caption)
    except ValueError:
        raise DalleError(f"{caption!r} is not a Fashion-MNIST class caption") from None


def evaluate_against_real(pipeline: DallePipeline, data: str | Path, out: str | Path, *,
                          prompts: int = 500, candidates: int = 1, fid_features: bool | None = None,
                          classifier: str | Path | None = None, r: int = 10,
                          batch_size: int = BATCH_SIZE, **kwargs) -> dict[str, float]:
    """Generate one image per caption of a held-out folder and compare with its real images.

    FID / KID (Inception-v3 pool features) against the real images of the same captions, CLIP
    score, CLIP R-precision (with `r` captions per ranking) and picture retrieval (is a generated
    image's nearest real picture its own?) with the pipeline's CLIP, and with
    a `classifier` directory the Fashion-MNIST label accuracy of the generated images.
    `fid_features=None` computes FID / KID when the Inception-v3 wheel is installed and warns
    otherwise; True requires it. With fewer distinct captions than `r`, R-precision ranks among
    all of them, with a warning (its chance level is 1 / R, so R is part of the metric's name).
    """
    import warnings

    from dalle.data.folder import ImageCaptionFolder
    from dalle.evaluate.fid import INSTALL_HINT, inception_available
    from dalle.evaluate.retrieval import clip_score, picture_retrieval, r_precision

    real = ImageCaptionFolder(data, pipeline.vae.config.image_size)
    n = min(prompts, len(real))
    captions = real.captions[:n]
    real_images = torch.stack([real[i]["image"] for i in range(n)])
    generations = pipeline(captions, images=1, candidates=candidates, batch_size=batch_size, **kwargs)
    generated = torch.cat([g.images for g in generations]).cpu()
    metrics: dict[str, float] = {"n": n, "candidates": candidates}
    if fid_features is None:
        fid_features = inception_available()
        if not fid_features:
            warnings.warn(f"FID and KID skipped: the Inception-v3 weights are not installed; "
                          f"{INSTALL_HINT}", stacklevel=2)
    if fid_features:
        from dalle.evaluate.fid import InceptionFeatures, fid, kid

        features = InceptionFeatures()
        real_feats, fake_feats = features(real_images), features(generated)
        metrics["fid"] = fid(real_feats, fake_feats)
        # Subsets of half the set, so that they differ and the spread means something.
        metrics["kid"], metrics["kid_std"] = kid(real_feats, fake_feats, subsets=50,
                                                 subset_size=min(1000, max(2, n // 2)))
    if pipeline.clip is not None:
        text = torch.stack([pipeline.tokenizer.encode(c) for c in captions])
        metrics["clip_score"] = clip_score(pipeline.clip, generated, text)
        metrics["picture_retrieval"] = picture_retrieval(pipeline.clip, generated, real_images, captions)
        distinct = len(set(captions))
        if distinct < r:
            if distinct < 2:
                warnings.warn(f"CLIP R-precision skipped: it needs at least 2 different captions, "
                              f"and the first {n} of {data} have {distinct} (pass more --prompts)",
                              stacklevel=2)
            else:
                warnings.warn(f"R-precision ranks among {distinct} captions, not {r}: the first {n} "
                              f"captions hold only {distinct} different ones", stacklevel=2)
            r = distinct
        if r >= 2:
            metrics[f"r_precision_{r}"] = r_precision(pipeline.clip, generated, text, r=r)
    if classifier is not None:
        from dalle.evaluate.classifier import LabelClassifier, label_accuracy

        model = LabelClassifier.from_pretrained(classifier)
        labels = torch.tensor([label_of(c) for c in captions])
        metrics["label_accuracy"] = label_accuracy(model, generated, labels)
        metrics["label_accuracy_real"] = label_accuracy(model, real_images, labels)
    out = ensure_writable_dir(out)
    (out / "results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    image_grid(torch.stack([real_images[:16], generated[:16]], 1).flatten(0, 1), columns=8).save(
        out / "real-and-generated.png")
    return metrics
