"""The seed formula, worked by hand from docs/seed/sd15-vram-architecture.md and the parameter counts in
docs/facts.md, against sdvram.formula."""

from __future__ import annotations

import itertools

import pytest

from sdvram.formula import seed_estimate

# docs/facts.md, "Parameter counts"
UNET, VAE, TEXT, SAFETY = 859_520_964, 83_653_863, 123_060_480, 303_981_588


def test_512x512_50_tokens_by_hand() -> None:
    # Stage 1: (860M + 84M + 123M) params x 2 bytes
    base = (UNET + VAE + TEXT) * 2
    assert base == 2_132_470_614
    # Stage 2: H*W*3*2 + 3*(H*W*3*2) + (H/8)*(W/8)*4*2 = 512*512*24 + 64*64*8
    vae_encode = 512 * 512 * 24 + 64 * 64 * 8
    assert vae_encode == 6_324_224
    # Stage 3: (H/8)*(W/8)*(4470 + 2*prompt_len)
    unet = 64 * 64 * (4470 + 2 * 50)
    assert unet == 18_718_720
    # Stage 4: the same terms as stage 2 in another order
    vae_decode = 64 * 64 * 8 + 512 * 512 * 24
    # Total: (base + max) x 1.2 = 2,581,427,200.8, rounded up to a whole byte
    total = 2_581_427_201

    got = seed_estimate(512, 512, 50)
    assert (got.base, got.vae_encode, got.unet, got.vae_decode) == (base, vae_encode, unet, vae_decode)
    assert got.peak_stage == "unet"
    assert got.total == total
    assert got.overhead == total - (base + unet)


def test_512x512_50_tokens_with_safety_checker_by_hand() -> None:
    base = (UNET + VAE + TEXT + SAFETY) * 2
    assert base == 2_740_433_790
    unet = 64 * 64 * (4470 + 2 * 50)
    # (2,740,433,790 + 18,718,720) x 1.2 = 3,310,983,012 exactly
    got = seed_estimate(512, 512, 50, safety_checker=True)
    assert got.base == base
    assert got.unet == unet
    assert got.total == 3_310_983_012
    assert got.overhead == 3_310_983_012 - (base + unet)


def test_size_that_is_not_a_multiple_of_8() -> None:
    # 396 x 380 (the balloon image): latent 49 x 47 (floor of H/8, W/8); the image terms use 380 x 396.
    got = seed_estimate(380, 396, 50)
    latent = (380 // 8) * (396 // 8)
    assert latent == 47 * 49
    assert got.vae_encode == 380 * 396 * 24 + latent * 8
    assert got.vae_decode == got.vae_encode
    assert got.unet == latent * (4470 + 100)


def test_batch_multiplies_every_activation_stage() -> None:
    one, four = seed_estimate(640, 480, 77), seed_estimate(640, 480, 77, batch=4)
    assert four.base == one.base
    for stage in ("vae_encode", "unet", "vae_decode"):
        assert getattr(four, stage) == 4 * getattr(one, stage)


def test_peak_is_the_largest_of_the_three_stages() -> None:
    sizes = (8, 64, 100, 512, 1024, 4096, 16384)
    for h, w, tokens in itertools.product(sizes, sizes, (1, 50, 77)):
        got = seed_estimate(h, w, tokens)
        stages = {"vae_encode": got.vae_encode, "unet": got.unet, "vae_decode": got.vae_decode}
        assert got.peak_activation == max(stages.values())
        assert stages[got.peak_stage] == max(stages.values())
        assert got.total * 5 >= (got.base + got.peak_activation) * 6 > (got.total - 1) * 5


@pytest.mark.parametrize("field", ["vae_encode", "unet", "vae_decode", "total"])
def test_monotone_in_height_width_and_tokens(field: str) -> None:
    steps = (8, 16, 256, 512, 520, 1024, 2048)
    for a, b in itertools.pairwise(steps):
        assert getattr(seed_estimate(b, 512, 50), field) >= getattr(seed_estimate(a, 512, 50), field)
        assert getattr(seed_estimate(512, b, 50), field) >= getattr(seed_estimate(512, a, 50), field)
    for t in range(1, 77):
        assert getattr(seed_estimate(512, 512, t + 1), field) >= getattr(seed_estimate(512, 512, t), field)


def test_tokens_change_only_the_unet_term_by_2_bytes_per_latent_pixel_per_token() -> None:
    a, b = seed_estimate(1024, 768, 10), seed_estimate(1024, 768, 11)
    assert b.unet - a.unet == 128 * 96 * 2
    assert (b.vae_encode, b.vae_decode, b.base) == (a.vae_encode, a.vae_decode, a.base)
