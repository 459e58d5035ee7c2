import json

import numpy as np
import pytest
import torch

from dalle.clip import CLIP
from dalle.config import CLIPConfig, PriorConfig, SamplingConfig, VAEConfig
from dalle.errors import DalleError
from dalle.evaluate.generation import evaluate_shapes, evaluate_split
from dalle.pipeline import DallePipeline, Generation
from dalle.prior import Prior
from dalle.text import TextTokenizer
from dalle.vae import DiscreteVAE

CAPTIONS = ["a large red circle", "a small blue square above a large red circle",
            "a small green cross to the left of a small white triangle"]


def tiny_pipeline(with_clip: bool = True, captions=CAPTIONS, text_length: int = 12,
                  prior_dropout: float = 0.0) -> DallePipeline:
    torch.manual_seed(0)
    tokenizer = TextTokenizer.train(list(captions) * 4, bpe_vocab_size=300, text_length=text_length)
    t = tokenizer.config
    vae = DiscreteVAE(VAEConfig(**{**VAEConfig.tiny().to_dict(), "image_size": 64, "downsample": 16}))
    prior = Prior(PriorConfig(**{**PriorConfig.tiny().to_dict(), "text_vocab_size": t.text_vocab_size,
                                 "text_length": t.text_length, "codebook_size": 32, "dropout": prior_dropout}))
    clip = CLIP(CLIPConfig(**{**CLIPConfig.tiny().to_dict(), "image_size": 64, "patch_size": 16,
                              "text_vocab_size": t.text_vocab_size, "text_length": t.text_length}))
    return DallePipeline(tokenizer, vae, prior, clip if with_clip else None)


@pytest.fixture(scope="module")
def pipeline() -> DallePipeline:
    return tiny_pipeline()


def test_text_to_images_with_reranking(pipeline):
    out = pipeline("a large red circle", images=2, candidates=6, seed=1)
    assert out.images.shape == (2, 3, 64, 64) and out.codes.shape == (2, 4, 4)
    assert out.scores is not None and out.scores[0] >= out.scores[1]
    # The kept images are the best of all six by CLIP.
    again = pipeline("a large red circle", images=6, candidates=6, seed=1)
    assert torch.allclose(again.scores[:2], out.scores)
    assert torch.equal(pipeline("a large red circle", images=2, candidates=6, seed=1).codes, out.codes)


def test_a_list_of_prompts_gives_one_generation_per_prompt(pipeline, monkeypatch):
    prompts = ["a large red circle", "a small blue square"]
    out = pipeline(prompts, images=2)
    assert [type(g) for g in out] == [Generation, Generation] and [g.prompt for g in out] == prompts
    assert all(g.images.shape == (2, 3, 64, 64) and g.scores is not None for g in out)
    # The prompts' candidates share the prior's batches, and each prompt gets its own rows back.
    batches = []

    def tagged(prior, text, **options):  # codes that name the text they were drawn for
        batches.append(text)
        return (text.sum(1) % 32).view(-1, 1, 1).expand(-1, 4, 4)

    monkeypatch.setattr("dalle.pipeline.sample_codes", tagged)
    out = pipeline(prompts, images=2, candidates=3, batch_size=4)
    ids = torch.stack([pipeline.encode_prompt(p) for p in prompts])
    assert [len(b) for b in batches] == [4, 2]
    assert torch.equal(torch.cat(batches), ids.repeat_interleave(3, 0))
    tags = ids.sum(1) % 32
    assert tags[0] != tags[1] and all((g.codes == tag).all() for g, tag in zip(out, tags))


@pytest.mark.parametrize("batch_size", [16, 4])
def test_a_one_prompt_list_gives_what_the_str_gives(pipeline, batch_size):
    options = dict(images=2, candidates=6, seed=7, batch_size=batch_size)
    one = pipeline("a large red circle", **options)
    (listed,) = pipeline(["a large red circle"], **options)
    for field in ("images", "codes", "scores", "indices"):
        assert torch.equal(getattr(listed, field), getattr(one, field)), field
    # Behind another prompt it draws other random numbers, so other images.
    behind = pipeline(["a small blue square", "a large red circle"], **options)[1]
    assert not torch.equal(behind.codes, one.codes)


def test_preview_sees_every_finished_row_of_the_codes_it_returns(pipeline):
    """preview(first, rows) after each row of each batch: a growing prefix of the codes each
    candidate ends with, while progress goes on counting every position."""
    previews, progress = [], []
    out = pipeline(["a large red circle", "a small blue square"], images=3, candidates=3, batch_size=4,
                   seed=5, preview=lambda first, rows: previews.append((first, rows.clone())),
                   progress=lambda done, total: progress.append((done, total)))
    grid = 4
    assert [(first, tuple(rows.shape)) for first, rows in previews] == (
        [(0, (4, r, grid)) for r in range(1, grid + 1)] + [(4, (2, r, grid)) for r in range(1, grid + 1)])
    final = torch.zeros(6, grid, grid, dtype=torch.long)  # every candidate, in sampling order
    for i, generation in enumerate(out):
        final[i * 3 + generation.indices] = generation.codes
    for first, rows in previews:
        assert torch.equal(rows, final[first : first + len(rows), : rows.shape[1]])
    assert len(progress) == 2 * grid**2 and progress[-1] == (6 * grid**2, 6 * grid**2)


def test_generations_convert_to_pil_images(pipeline):
    out = pipeline("a large red circle", images=2, candidates=4, seed=2)
    pictures = out.pil()
    assert [(p.mode, p.size) for p in pictures] == [("RGB", (64, 64))] * 2
    assert np.array_equal(np.asarray(pictures[1]),
                          (out.images[1] * 255).round().byte().permute(1, 2, 0).numpy())


def test_bf16_loading_casts_the_prior_only(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "p")
    loaded = DallePipeline.from_pretrained(tmp_path / "p", dtype=torch.bfloat16)
    assert loaded.prior.dtype == torch.bfloat16 and loaded.device == torch.device("cpu")
    assert loaded.vae.dtype == loaded.clip.dtype == torch.float32
    # What `--bf16` did before it was a loading option: cast the float32 prior afterwards.
    cast = DallePipeline.from_pretrained(tmp_path / "p")
    assert cast.prior.dtype == torch.float32
    cast.prior.to(torch.bfloat16)
    a = loaded("a large red circle", images=2, candidates=4, seed=6)
    assert a.images.dtype == torch.float32
    assert torch.equal(a.codes, cast("a large red circle", images=2, candidates=4, seed=6).codes)


def test_save_load_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "p")
    loaded = DallePipeline.from_pretrained(tmp_path / "p")
    a = pipeline("a large red circle", images=2, seed=3)
    b = loaded("a large red circle", images=2, seed=3)
    assert torch.equal(a.codes, b.codes)


def test_sampling_defaults_travel_with_the_pipeline(pipeline, tmp_path):
    guided = DallePipeline(pipeline.tokenizer, pipeline.vae, pipeline.prior, pipeline.clip,
                           SamplingConfig(temperature=0.8, top_k=8, guidance_scale=3.0))
    guided.save_pretrained(tmp_path / "p")
    loaded = DallePipeline.from_pretrained(tmp_path / "p")
    assert loaded.sampling == guided.sampling
    explicit = pipeline("a large red circle", images=2, temperature=0.8, top_k=8,
                        guidance_scale=3.0, seed=4)
    assert torch.equal(loaded("a large red circle", images=2, seed=4).codes, explicit.codes)
    # An argument overrides the default; the unguided draw differs from the guided one.
    plain = pipeline("a large red circle", images=2, temperature=0.8, top_k=8, seed=4)
    assert torch.equal(loaded("a large red circle", images=2, guidance_scale=1.0, seed=4).codes,
                       plain.codes)
    assert not torch.equal(plain.codes, explicit.codes)
    with pytest.raises(ValueError, match="guidance_scale must be at least 1"):
        SamplingConfig(guidance_scale=0.5)
    (tmp_path / "p" / "sampling.json").write_text('{"temperature": 0}')
    with pytest.raises(ValueError, match="not a valid SamplingConfig: temperature must be positive"):
        DallePipeline.from_pretrained(tmp_path / "p")


def test_completion_keeps_the_top_rows(pipeline):
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = pipeline("a large red circle", images=3, init_image=image, keep_rows=2, seed=0)
    top = pipeline.vae.encode(image[None])[0, :2]
    assert all(torch.equal(codes[:2], top) for codes in out.codes)


def test_bad_input_is_named(pipeline, tmp_path):
    with pytest.raises(ValueError, match="prompt is empty"):
        pipeline("   ")
    with pytest.raises(ValueError, match="no character this model's captions ever used"):
        pipeline("∑∑ ∂")
    with pytest.raises(ValueError, match="candidates \\(2\\) must be at least"):
        pipeline("a red circle", images=4, candidates=2)
    with pytest.raises(ValueError, match="candidates \\(0\\) must be at least"):
        pipeline("a red circle", images=1, candidates=0)
    with pytest.raises(ValueError, match="candidates \\(1000000000\\) must be at most 1024 per prompt"):
        pipeline("a red circle", images=10**9, candidates=10**9)
    with pytest.raises(ValueError, match="images must be at least 1"):
        pipeline("a red circle", images=0)
    with pytest.raises(ValueError, match="must be 3x64x64"):
        pipeline("a red circle", init_image=torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="no CLIP model"):
        tiny_pipeline(with_clip=False)("a red circle", images=1, candidates=4)
    with pytest.raises(FileNotFoundError, match="is not a pipeline"):
        DallePipeline.from_pretrained(tmp_path)
    with pytest.raises(DalleError, match="no prompts given"):
        pipeline([])
    with pytest.raises(DalleError, match="^prompt 2 of 3 \\('  '\\): the prompt is empty$"):
        pipeline(["a red circle", "  ", "a blue square"])


def test_mismatched_parts_are_named(pipeline):
    p = pipeline
    wrong = Prior(PriorConfig(**{**p.prior.config.to_dict(), "codebook_size": 99}))
    with pytest.raises(ValueError, match="dVAE \\(32 codes, 4x4 grid\\) does not match the prior \\(99 codes"):
        DallePipeline(p.tokenizer, p.vae, wrong, p.clip)


def test_shapes_evaluation_writes_results(pipeline, tmp_path):
    for split in ("test-seen", "test-zero-shot"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i, caption in enumerate(CAPTIONS):
            (tmp_path / "data" / split / f"{i}.txt").write_text(caption)
    results = evaluate_shapes(pipeline, tmp_path / "data", tmp_path / "out", prompts=2, candidates=3,
                              guidance_scale=2.0)
    assert set(results["test-zero-shot"]) == {"first", "best_of_3"}
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["guidance_scale"] == 2.0 and settings["temperature"] == 1.0  # the pipeline's
    assert results["test-seen"]["first"]["n"] == 2
    for name in ("results.json", "results.md", "test-seen-first-and-best.png"):
        assert (tmp_path / "out" / name).exists()


def test_evaluation_judges_the_first_sample_and_the_best(pipeline):
    prompts = CAPTIONS * 2
    _, pairs = evaluate_split(pipeline, prompts, 3, seed=2, batch_size=4)
    options = dict(candidates=3, seed=2, batch_size=4)
    best = torch.cat([g.images for g in pipeline(prompts, images=1, **options)])
    # CLIP does not touch sampling: without it the first candidate is the first image.
    plain = DallePipeline(pipeline.tokenizer, pipeline.vae, pipeline.prior)
    first = torch.stack([g.images[0] for g in plain(prompts, images=3, **options)])
    assert torch.equal(pairs[:, 1], best) and torch.equal(pairs[:, 0], first)
    assert not torch.equal(first, best)


def test_evaluation_against_real_images(tmp_path):
    from PIL import Image

    from dalle.data.fashion_mnist import CAPTIONS as FASHION
    from dalle.evaluate.classifier import ClassifierConfig, LabelClassifier
    from dalle.evaluate.generation import evaluate_against_real

    pipeline = tiny_pipeline(captions=FASHION, text_length=8)
    (tmp_path / "real").mkdir()
    for i, caption in enumerate(FASHION[:6]):
        Image.new("RGB", (28, 28), (20 * i, 100, 200)).save(tmp_path / "real" / f"{i}.png")
        (tmp_path / "real" / f"{i}.txt").write_text(caption)
    LabelClassifier(ClassifierConfig()).save_pretrained(tmp_path / "classifier")
    metrics = evaluate_against_real(pipeline, tmp_path / "real", tmp_path / "out", prompts=5,
                                    candidates=2, classifier=tmp_path / "classifier", r=3)
    assert metrics["n"] == 5 and metrics["fid"] >= 0 and 0 <= metrics["clip_score"] <= 100
    assert 0 <= metrics["r_precision_3"] <= 1 and 0 <= metrics["label_accuracy"] <= 1
    assert (tmp_path / "out" / "results.json").exists()
    assert (tmp_path / "out" / "real-and-generated.png").exists()


def test_evaluation_without_the_inception_wheel_or_with_few_captions_warns_and_goes_on(tmp_path, monkeypatch):
    from PIL import Image

    from dalle.data.fashion_mnist import CAPTIONS as FASHION
    from dalle.evaluate.generation import evaluate_against_real

    pipeline = tiny_pipeline(captions=FASHION, text_length=8)
    (tmp_path / "real").mkdir()
    for i, caption in enumerate(FASHION[:3]):
        Image.new("RGB", (28, 28), (60 * i, 100, 200)).save(tmp_path / "real" / f"{i}.png")
        (tmp_path / "real" / f"{i}.txt").write_text(caption)
    monkeypatch.setattr("dalle.evaluate.fid.inception_available", lambda: False)
    with pytest.warns(UserWarning) as caught:
        metrics = evaluate_against_real(pipeline, tmp_path / "real", tmp_path / "out", r=10)
    messages = " ".join(str(w.message) for w in caught)
    assert "FID and KID skipped" in messages and "ranks among 3 captions, not 10" in messages
    assert "fid" not in metrics and 0 <= metrics["r_precision_3"] <= 1
    (tmp_path / "real" / "1.txt").write_text(FASHION[0])
    (tmp_path / "real" / "2.txt").write_text(FASHION[0])
    with pytest.warns(UserWarning, match="R-precision skipped: it needs at least 2 different captions"):
        metrics = evaluate_against_real(pipeline, tmp_path / "real", tmp_path / "out2", fid_features=False)
    assert "clip_score" in metrics and not any(k.startswith("r_precision") for k in metrics)
