"""Shared test helpers: the reference fixtures and tiny components built in code (no Hub access)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler, EPGPipeline, EPGTransformer2DModel

DATA = Path(__file__).parent / "data"

TINY = dict(
    sample_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2,
    decoder_depth=2, decoder_embed_dim=48, decoder_num_heads=2, num_classes=10,
)
TINY_LABELS = {i: name for i, name in enumerate(
    ["tench, Tinca tinca", "goldfish", "great white shark", "tiger shark", "hammerhead",
     "electric ray", "stingray", "cock", "hen", "ostrich"]
)}


@pytest.fixture(scope="session")
def reference():
    """The reference implementation's tensors and their configuration (tests/data/README)."""
    tensors = load_file(DATA / "epg_reference_tiny.safetensors")
    meta = json.loads((DATA / "epg_reference_tiny.json").read_text())["tiny32"]

    def sub(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    generator = dict(meta["epg_config"])
    generator["sample_size"] = generator.pop("image_size")
    encoder = dict(meta["rcm_config"])
    encoder["sample_size"] = encoder.pop("image_size")
    encoder["projector_hidden_dim"] = encoder.pop("hidden_dim")
    encoder["projector_dim"] = encoder.pop("output_dim")
    return dict(tensors=tensors, meta=meta, sub=sub, generator_config=generator, encoder_config=encoder)


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised heads give non-trivial outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model.eval()


def tiny_transformer(seed: int = 0, **overrides) -> EPGTransformer2DModel:
    torch.manual_seed(seed)
    return perturbed(EPGTransformer2DModel(**{**TINY, **overrides}), seed)


def tiny_pipeline(consistency: bool = False, **overrides) -> EPGPipeline:
    transformer = tiny_transformer(**overrides)
    size = transformer.config.sample_size
    scheduler = EPGConsistencyScheduler(image_size=size) if consistency else EPGHeunScheduler(image_size=size)
    pipe = EPGPipeline(transformer, scheduler, id2label=TINY_LABELS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``epg argv`` expecting a user error: exit status 2 and one line on stderr (returned)."""
    from epg_diffusers import cli

    capsys.readouterr()
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and error.startswith(f"epg {argv[0]}: error: "), (status, error)
    return error
