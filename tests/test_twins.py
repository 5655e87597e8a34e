"""Twin blocks (twins.py): what makes two blocks' calls alike, and runs that replay one's calls from the other's."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D

from sdvram.choices import Architecture, DType, Offload
from sdvram.gpus import GPUS
from sdvram.requests import RunRequest, Settings, SimulateOptions
from sdvram.simulate import CallReplay, Simulator
from sdvram.twins import signature

from .test_simulate import figures


def _block(**config: object) -> BasicTransformerBlock:
    with torch.device("meta"):
        return BasicTransformerBlock(**{"dim": 64, "num_attention_heads": 2, "attention_head_dim": 32,
                                        "cross_attention_dim": 48, **config})


def test_blocks_built_alike_are_twins_and_any_difference_parts_them() -> None:
    first, second = _block(), _block()
    assert signature(first) is not None and signature(first) == signature(second)
    assert signature(_block(num_attention_heads=4, attention_head_dim=16)) != signature(first)  # same weights' shapes
    assert signature(_block(only_cross_attention=True)) != signature(first)
    second.attn1.set_processor(AttnProcessor())  # what attention slicing or another kernel choice does
    assert signature(second) != signature(first)
    second.attn1.set_processor(AttnProcessor2_0())
    assert signature(second) == signature(first)
    with torch.device("meta"):
        assert signature(ResnetBlock2D(in_channels=64, out_channels=64, temb_channels=32)) != signature(first)
    second.half()  # the weights' dtype (SDXL's VAE is upcast to float32 for its decoder)
    assert signature(second) != signature(first)


def test_a_block_with_what_its_signature_cannot_describe_has_none() -> None:
    block = _block()
    held = []
    block.register_forward_hook(lambda module, args, out: held.append(out))  # a closure: what it holds is unseen
    assert signature(block) is None
    block = _block()
    block.others = [_block()]  # a module outside its tree (an attribute set to a module itself joins the tree)
    assert signature(block) is None


@pytest.mark.parametrize("settings", [{}, {"vae_tiling": True}, {"offload": Offload.sequential},
                                      {"attention_slicing": "auto"}], ids=["none", "tiling", "sequential", "slicing"])
def test_runs_that_replay_twin_blocks_give_every_figure_of_runs_that_run_every_call(
        settings: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny UNet and VAE have blocks built alike: at a new size each set's first call runs, the others are
    replayed from its log; the record must be what running every call gives, and replays must have happened."""
    replays: list[CallReplay] = []
    init = CallReplay.__init__

    def noted(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003 -- CallReplay.__init__'s own
        init(self, *args, **kwargs)
        replays.append(self)

    monkeypatch.setattr(CallReplay, "__init__", noted)
    request = RunRequest(height=256, width=320, architecture=Architecture.tiny, dtype=DType.float16,
                         settings=Settings(steps=4, strength=1.0, **settings))
    replayed = Simulator(Architecture.tiny, DType.float16).run(request, SimulateOptions(GPUS["t4"]))
    assert replays[-1].replayed["twin blocks"] > 0
    every_call = Simulator(Architecture.tiny, DType.float16).run(request, SimulateOptions(GPUS["t4"], replay=False))
    assert replays[-1].replayed["twin blocks"] == 0
    replayed.simulation.unet_calls_replayed = 0  # the one figure that says what was replayed
    assert figures(replayed) == figures(every_call)


def test_under_sequential_offload_the_vae_s_blocks_are_not_replayed_from_twins() -> None:
    """The known fault of the VAE's weights under sequential offload (docs/simulate.md) moves with what is replayed
    there, so only the UNet's blocks are."""
    simulator = Simulator(Architecture.tiny, DType.float16)
    unet = set(simulator.pipe.unet.modules())
    plain, sequential = (simulator._twins(RunRequest(height=64, width=64, architecture=Architecture.tiny,
                                                     settings=Settings(offload=offload)))
                         for offload in (Offload.none, Offload.sequential))
    assert plain == simulator.blocks and any(block not in unet for block in plain)
    assert sequential == [block for block in plain if block in unet] and sequential
