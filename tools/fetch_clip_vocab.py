"""Fetch the CLIP BPE vocabulary that sdvram ships as package data, with its MIT licence notice.

The file ``bpe_simple_vocab_16e6.txt.gz`` is OpenAI CLIP's tokenizer vocabulary (MIT licence); it is
byte-identical in the PyPI packages openai-clip, clip-anytorch and open_clip_torch. This script takes it
from the clip-anytorch wheel (pure Python, small), checks its SHA-256, and writes it and the licence into
``src/sdvram/data/clip/``. Run it from the repository root: ``python tools/fetch_clip_vocab.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "clip-anytorch==2.6.0"
VOCAB_MEMBER = "clip/bpe_simple_vocab_16e6.txt.gz"
LICENSE_MEMBER = "clip_anytorch-2.6.0.dist-info/LICENSE"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
TARGET = Path("src/sdvram/data/clip")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL], check=True
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            vocab = archive.read(VOCAB_MEMBER)
            licence = archive.read(LICENSE_MEMBER).decode("utf-8")
    digest = hashlib.sha256(vocab).hexdigest()
    if digest != VOCAB_SHA256:
        print(f"unexpected SHA-256 {digest} for {VOCAB_MEMBER}; refusing to write it", file=sys.stderr)
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    (TARGET / "bpe_simple_vocab_16e6.txt.gz").write_bytes(vocab)
    (TARGET / "LICENSE").write_text(
        "bpe_simple_vocab_16e6.txt.gz is the CLIP tokenizer vocabulary by OpenAI, taken unchanged from the\n"
        f"PyPI wheel {WHEEL} by tools/fetch_clip_vocab.py. Its licence follows.\n\n{licence}",
        encoding="utf-8",
    )
    print(f"wrote {TARGET}/bpe_simple_vocab_16e6.txt.gz ({len(vocab):,} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
