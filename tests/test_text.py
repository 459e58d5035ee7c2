import random
import warnings

import pytest
import torch

from dalle.config import TokenizerConfig
from dalle.data.shapes import caption, generate_scenes
from dalle.text import TextTokenizer

CAPTIONS = [caption(scene) for scene in generate_scenes("train", 400, seed=0)] + [
    "Hello, World! A GRINNING face 😀 with tags: happy, smile",
    "a café naïve—“quoted” text",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(CAPTIONS, bpe_vocab_size=400, text_length=24, bpe_dropout=0.1)


def test_per_position_pads_and_start_of_image(tokenizer):
    config = tokenizer.config
    ids = tokenizer.encode("a large red circle")
    n = len(tokenizer.tokenize("a large red circle"))
    assert ids.shape == (config.text_length + 1,)
    assert (ids[:n] < config.bpe_vocab_size).all()
    assert ids[n:-1].tolist() == list(range(config.pad_id + n, config.pad_id + config.text_length))
    assert ids[-1] == config.start_of_image_id == config.text_vocab_size - 1 == len(tokenizer) - 1
    # The same pad position gets the same id whatever the caption; different positions differ.
    other = tokenizer.encode("a small blue square above a large white cross")
    assert other[-2] == ids[-2] and len(set(ids[n:-1].tolist())) == config.text_length - n


def test_lower_case_round_trip_and_whitespace(tokenizer):
    assert tokenizer.decode(tokenizer.encode("A  Large\tRED circle ")) == "a large red circle"
    assert tokenizer.decode(tokenizer.encode(CAPTIONS[-2])) == CAPTIONS[-2].lower()


def test_empty_caption_is_all_pads(tokenizer):
    config = tokenizer.config
    for empty in ("", "   \n\t"):
        ids = tokenizer.encode(empty)
        assert ids[:-1].tolist() == list(range(config.pad_id, config.pad_id + config.text_length))


def test_bad_captions_get_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="not valid UTF-8"):
        tokenizer.encode(b"a red \xff circle")
    with pytest.raises(ValueError, match="UTF-8 cannot encode"):
        tokenizer.encode("a red \udcff circle")
    assert tokenizer.decode(tokenizer.encode(b"a red circle")) == "a red circle"


def test_truncation_warns_by_how_much(tokenizer):
    long = " ".join(["a large red circle"] * 10)
    n = len(tokenizer.tokenize(long))
    with pytest.warns(UserWarning, match=f"{n} tokens truncated to the text length 24 "
                                         f"\\({n - 24} tokens dropped\\)"):
        ids = tokenizer.encode(long)
    assert (ids[:-1] < tokenizer.config.bpe_vocab_size).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode("a large red circle")  # no warning when it fits


def test_dropout_only_with_a_generator_and_reproducible(tokenizer):
    text = "a small white circle to the right of a large purple triangle"
    plain = tokenizer.tokenize(text)
    assert all(tokenizer.tokenize(text) == plain for _ in range(5))  # sampling is deterministic
    dropped = [tokenizer.tokenize(text, random.Random(seed)) for seed in range(20)]
    assert any(d != plain for d in dropped)
    assert all(len(d) >= len(plain) for d in dropped)
    assert all(tokenizer.decode(d) == text for d in dropped)  # dropout changes splits, not text
    assert dropped == [tokenizer.tokenize(text, random.Random(seed)) for seed in range(20)]


def test_merges_without_dropout_equal_the_library(tokenizer):
    for text in CAPTIONS:
        words = tokenizer.tokenizer.pre_tokenizer.pre_tokenize_str(
            tokenizer.tokenizer.normalizer.normalize_str(" ".join(text.split())))
        ours = [tokenizer.vocab[s] for w, _ in words for s in tokenizer._merge(w, random.Random(0), 0.0)]
        assert ours == tokenizer.tokenize(text)


def test_no_dropout_when_disabled():
    tok = TextTokenizer.train(CAPTIONS, bpe_vocab_size=400, text_length=24, bpe_dropout=0.0)
    text = CAPTIONS[3]
    assert tok.tokenize(text, random.Random(0)) == tok.tokenize(text)


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = TextTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.config == tokenizer.config
    batch = CAPTIONS[:8]
    assert torch.equal(loaded.encode_batch(batch), tokenizer.encode_batch(batch))
    rngs = lambda: [random.Random(i) for i in range(8)]  # noqa: E731
    assert torch.equal(loaded.encode_batch(batch, rngs()), tokenizer.encode_batch(batch, rngs()))


def test_training_is_deterministic_and_vocab_is_what_was_learned():
    a = TextTokenizer.train(CAPTIONS, bpe_vocab_size=350, text_length=8)
    b = TextTokenizer.train(CAPTIONS, bpe_vocab_size=350, text_length=8)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    assert a.config.bpe_vocab_size == a.tokenizer.get_vocab_size() <= 350
    assert a.config.text_vocab_size == a.config.bpe_vocab_size + 8 + 1


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-tokenizer"):
        TextTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    TokenizerConfig().save(tmp_path / "config.json")
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        TextTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="empty caption corpus"):
        TextTokenizer.train([], bpe_vocab_size=300)


def test_config_validation():
    with pytest.raises(ValueError, match="bpe_dropout"):
        TokenizerConfig(bpe_dropout=1.0)
    assert TokenizerConfig.from_json(TokenizerConfig().to_json()) == TokenizerConfig()
    assert TokenizerConfig().text_vocab_size == 16_384 + 256 + 1


def test_unknown_characters_are_reported(tokenizer):
    assert tokenizer.unknown_characters("a large red circle") == []
    assert tokenizer.unknown_characters("a red ∑ circle ∑") == ["∑"]
    assert "😀" not in tokenizer.unknown_characters("😀")  # the emoji was in the corpus
    assert TextTokenizer(tokenizer.tokenizer, TokenizerConfig(
        bpe_vocab_size=tokenizer.config.bpe_vocab_size, text_length=24)).unknown_characters("∑") == []


def test_dropout_never_pushes_a_caption_past_the_text_length():
    """A caption that fits without dropout is never cut by it: a draw too long falls back to the
    plain encoding, silently."""
    captions = ["a small green triangle above a large red circle", "a blue square"]
    plain = TextTokenizer.train(captions, bpe_vocab_size=400, text_length=64)
    fitted = max(len(plain.tokenize(c)) for c in captions)
    tokenizer = TextTokenizer(plain.tokenizer, TokenizerConfig(
        bpe_vocab_size=plain.config.bpe_vocab_size, text_length=fitted, bpe_dropout=0.5))
    longer = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(50):
            rng = random.Random(seed)
            longer += len(tokenizer.tokenize(captions[0], random.Random(seed))) > fitted
            ids = tokenizer.encode(captions[0], rng)
            assert tokenizer.decode(ids) == captions[0]
    assert longer > 0  # dropout did make longer encodings, which fell back
