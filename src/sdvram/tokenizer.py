"""CLIP's byte-level BPE tokenizer in pure Python, so ``sdvram estimate --prompt`` counts tokens without
importing transformers.

It follows transformers' ``CLIPTokenizer`` (the one the diffusers pipeline uses) step for step: NFC,
whitespace runs folded to one space, lower case; the split pattern
``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``; the GPT-2 byte to
unicode map; BPE over the merges with ``</w>`` ending each word. ``tests/test_tokenizer.py`` checks it
against transformers' tokenizer and against CLIP ids known by hand.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from sdvram.architecture import CLIP_MAX_TOKENS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (BOS, EOS)
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # CLIP's split pattern, in its order
# OpenAI's SimpleTokenizer reads lines 1 .. 48894 of the vocabulary file: 49152 BPE tokens, less the 256
# byte tokens and the 2 special tokens, are merges (line 0 is a version header).
MERGE_COUNT = 49152 - 256 - 2
END_OF_WORD = "</w>"


@dataclass(frozen=True)
class TokenCount:
    """How many tokens the text encoder sees for a prompt, start and end tokens included."""

    tokens: int  # after the pipeline's truncation to 77
    untruncated: int | None  # what the prompt would need without truncation; None: over 77, not counted on

    @property
    def truncated(self) -> bool:
        return self.untruncated is None or self.untruncated > self.tokens

    def describe(self) -> str:
        """"52 tokens", or "over 77 tokens" where counting stopped."""
        return f"over {CLIP_MAX_TOKENS} tokens" if self.untruncated is None else f"{self.untruncated} tokens"


def count_tokens(prompt: str) -> TokenCount:
    """Tokens of ``prompt`` as the pipeline's tokenizer produces them: BOS + BPE tokens + EOS, cut at 77.

    Counting stops once the prompt is known to need more than 77 (``untruncated`` is then None): past the
    cut nothing changes what the pipeline runs, and BPE on one huge word costs time quadratic in its length."""
    ids = encode(prompt, limit=CLIP_MAX_TOKENS - 2)
    if ids is None:
        return TokenCount(tokens=CLIP_MAX_TOKENS, untruncated=None)
    untruncated = len(ids) + 2
    return TokenCount(tokens=min(untruncated, CLIP_MAX_TOKENS), untruncated=untruncated)


def encode(text: str, limit: int | None = None) -> list[int] | None:
    """BPE token ids of ``text``, without the start and end tokens; None as soon as they are known to number
    more than ``limit`` (a word of n bytes takes at least n / (the longest token's bytes) tokens)."""
    vocab, ranks = _tables()
    longest = _longest_token()
    ids: list[int] = []
    for segment, special in _split_special(text):
        if special:
            ids.append(vocab[segment])
            continue
        normal = unicodedata.normalize("NFC", segment)
        normal = re.sub(r"\s+", " ", normal).lower()
        cap = None if limit is None else (limit + 1) * longest  # a longer piece alone exceeds the limit
        for piece in _pieces(normal, cap):
            data = piece.encode("utf-8")
            if limit is not None and len(ids) + -(-len(data) // longest) > limit:
                return None
            word = "".join(_byte_encoder()[b] for b in data)
            ids.extend(vocab[symbol] for symbol in _bpe(word, ranks))
            if limit is not None and len(ids) > limit:
                return None
    return ids


def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP vocabulary (49,408 tokens) and merge list (48,894 pairs) from the shipped vocabulary file,
    built as OpenAI's SimpleTokenizer builds them."""
    vocab, ranks = _tables()
    return dict(vocab), sorted(ranks, key=ranks.__getitem__)


@cache
def _tables() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    path = resources.files("sdvram") / "data" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    # read up to the last merge only (a fifth of the file: the rest are merges CLIP does not use), streamed
    with path.open("rb") as packed, gzip.open(packed, "rt", encoding="utf-8") as lines:
        next(lines)  # the file's version line
        merges: list[tuple[str, str]] = []
        for _ in range(MERGE_COUNT):
            first, second = next(lines).split()
            merges.append((first, second))
    byte_symbols = list(_byte_encoder().values())
    symbols = byte_symbols + [s + END_OF_WORD for s in byte_symbols] + ["".join(m) for m in merges]
    symbols += [BOS, EOS]
    vocab = dict(zip(symbols, range(len(symbols)), strict=True))
    ranks = dict(zip(merges, range(len(merges)), strict=True))
    return vocab, ranks


@cache
def _byte_encoder() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters, which CLIP's vocabulary uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def _split_special(text: str) -> list[tuple[str, bool]]:
    """Cut the special tokens out first, as the tokenizer's added tokens are matched before normalising."""
    out: list[tuple[str, bool]] = []
    rest = text
    while rest:
        hits = [(rest.find(s), s) for s in SPECIAL_TOKENS if s in rest]
        if not hits:
            out.append((rest, False))
            break
        at, token = min(hits)
        if at:
            out.append((rest[:at], False))
        out.append((token, True))
        rest = rest[at + len(token) :]
    return out


def _kind(char: str) -> str:
    if char.isspace():
        return "space"
    category = unicodedata.category(char)[0]
    return {"L": "letter", "N": "number"}.get(category, "other")


@cache
def _longest_token() -> int:
    """Bytes in the longest vocabulary symbol (its ``</w>`` mark aside): no token covers more."""
    vocab, _ = _tables()
    return max(len(symbol.removesuffix(END_OF_WORD)) for symbol in vocab if symbol not in SPECIAL_TOKENS)


def _pieces(text: str, cap: int | None = None) -> Iterator[str]:
    """The pre-tokenizer split: contractions, letter runs, single digits, runs of other symbols. A run longer
    than ``cap`` characters is cut at ``cap + 1`` (enough to show it is too long to count)."""
    i, n = 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        contraction = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
        if contraction:
            yield contraction
            i += len(contraction)
            continue
        j = i + 1
        if kind != "number":  # a number matches one character at a time
            while j < n and _kind(text[j]) == kind:
                j += 1
                if cap is not None and j - i > cap:
                    yield text[i:j]
                    return
        yield text[i:j]
        i = j


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge the symbols of ``word`` (its last one marked ``</w>``) by rank until no merge applies."""
    symbols = [*word[:-1], word[-1] + END_OF_WORD]
    while len(symbols) > 1:
        pairs = {(symbols[k], symbols[k + 1]) for k in range(len(symbols) - 1)}
        best = min(pairs, key=lambda pair: ranks.get(pair, MERGE_COUNT))
        if best not in ranks:
            break
        merged: list[str] = []
        k = 0
        while k < len(symbols):
            if k < len(symbols) - 1 and (symbols[k], symbols[k + 1]) == best:
                merged.append(symbols[k] + symbols[k + 1])
                k += 2
            else:
                merged.append(symbols[k])
                k += 1
        symbols = merged
    return symbols
