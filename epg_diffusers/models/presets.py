"""Named architectures: the paper's generators (Table 7) and pre-training encoders (Table 8).

Names are the strings used in the README and on the command line. Patch 16 means 256 px images and
patch 32 means 512 px, both 256 tokens. Parameter counts (``tests/test_presets.py``): generators count
every parameter of the full encoder-decoder (class embedding included); encoders count the trunk plus the
3-layer projector (hidden 4096, output 256) and no momentum copy.
"""

_ENCODERS = {  # depth, width, heads
    "S": (6, 768, 12),
    "B": (12, 768, 12),
    "L": (16, 1024, 16),
}
_DECODERS = {  # encoder size, decoder depth, width, heads
    "S": ("S", 6, 768, 12),
    "B": ("B", 12, 768, 12),
    "L": ("L", 16, 1024, 16),
    "XL": ("B", 12, 1584, 22),
    "XXL": ("B", 12, 1920, 16),
    "G": ("B", 12, 2688, 21),
}
_RESOLUTION = {16: 256, 32: 512}


def _generator(size: str, patch: int) -> dict:
    encoder, decoder_depth, decoder_width, decoder_heads = _DECODERS[size]
    depth, width, heads = _ENCODERS[encoder]
    return dict(
        sample_size=_RESOLUTION[patch], patch_size=patch, depth=depth, embed_dim=width, num_heads=heads,
        decoder_depth=decoder_depth, decoder_embed_dim=decoder_width, decoder_num_heads=decoder_heads,
    )


def _encoder(size: str, patch: int) -> dict:
    depth, width, heads = _ENCODERS[size]
    return dict(sample_size=_RESOLUTION[patch], patch_size=patch, depth=depth, embed_dim=width, num_heads=heads)


PRESETS: dict[str, tuple[str, dict]] = {
    **{f"EPG-{size}/16": ("EPGTransformer2DModel", _generator(size, 16)) for size in _DECODERS},
    "EPG-L/32": ("EPGTransformer2DModel", _generator("L", 32)),
    **{f"RCM-{size}/{patch}": ("RCMEncoderModel", _encoder(size, patch)) for size in _ENCODERS for patch in (16, 32)},
}

# Parameter counts reported by the paper (millions): Table 7 (generators) and Table 8 (encoders).
PAPER_PARAMETERS_M = {
    "EPG-S/16": 116, "EPG-B/16": 229, "EPG-L/16": 540, "EPG-XL/16": 583, "EPG-XXL/16": 789, "EPG-G/16": 1391,
    "RCM-S/16": 64, "RCM-B/16": 106, "RCM-L/16": 225,
}


def get_preset(name: str) -> tuple[str, dict]:
    """(model class name, config kwargs) of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    class_name, config = PRESETS[name]
    return class_name, dict(config)
