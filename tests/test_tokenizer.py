"""The pure-Python CLIP tokenizer: ids known by hand, and agreement with transformers' CLIPTokenizer built
from the same vocabulary (the tokenizer the diffusers pipeline runs)."""

from __future__ import annotations

import pytest

from sdvram.tokenizer import clip_vocab, count_tokens, encode

# Ids from the CLIP vocabulary, looked up by hand: bos/eos are its last two entries (49406, 49407);
# "a</w>" 320, "photo</w>" 1125, "of</w>" 539, "cat</w>" 2368, "dog</w>" 1929.
PROMPTS_WITH_KNOWN_IDS = {
    "a photo of a cat": [320, 1125, 539, 320, 2368],
    "A Photo of a DOG": [320, 1125, 539, 320, 1929],
}

AWKWARD_PROMPTS = [
    "a hot-air balloon, drifting over the VALLEY at dawn!!  ",
    "don't stop'em 12345 café ²³ Ⅻ naïve 東京 🎈",
    "  multiple\tspaces\n\nand new lines ",
    "it's we're they've I'm we'll he'd",
    "<|startoftext|>x<|endoftext|>",
    "cafe\u0301 (NFC) !'s ...",
    "",
]


@pytest.mark.parametrize(("prompt", "ids"), PROMPTS_WITH_KNOWN_IDS.items())
def test_known_ids(prompt: str, ids: list[int]) -> None:
    assert encode(prompt) == ids
    assert count_tokens(prompt).tokens == len(ids) + 2


def test_vocabulary_size_and_special_tokens() -> None:
    vocab, merges = clip_vocab()
    assert len(vocab) == 49_408
    assert len(merges) == 48_894
    assert vocab["<|startoftext|>"] == 49_406
    assert vocab["<|endoftext|>"] == 49_407


def test_prompt_just_within_77_is_counted_exactly() -> None:
    counted = count_tokens("cat " * 75)  # bos + 75 + eos
    assert (counted.tokens, counted.untruncated, counted.truncated) == (77, 77, False)


def test_long_prompt_is_truncated_to_77_and_counting_stops() -> None:
    counted = count_tokens("cat " * 100)
    assert counted.untruncated is None  # past 77 the count changes nothing the pipeline does
    assert counted.tokens == 77
    assert counted.truncated and counted.describe() == "over 77 tokens"


@pytest.mark.parametrize("prompt", ["x" * 1_000_000, "ab" * 500_000, "1" * 1_000_000, "🎈" * 250_000])
def test_pathological_prompts_are_over_77_without_running_bpe_on_them(prompt: str) -> None:
    # One huge word would cost BPE time quadratic in its length (128 s for 100,000 characters before):
    # its bytes alone prove it needs more than 77 tokens.
    assert count_tokens(prompt).untruncated is None


@pytest.fixture(scope="module")
def transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    vocab, merges = clip_vocab()
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


@pytest.mark.parametrize("prompt", [*PROMPTS_WITH_KNOWN_IDS, *AWKWARD_PROMPTS])
def test_agrees_with_transformers(transformers_tokenizer, prompt: str) -> None:
    ids = transformers_tokenizer(prompt)["input_ids"]
    assert ids[0] == 49_406 and ids[-1] == 49_407
    assert encode(prompt) == ids[1:-1]
