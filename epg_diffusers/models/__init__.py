"""Models: the EPG generator, the RCM pre-training encoder and the preset registry."""

from .layers import EPGAttention, EPGAttnProcessor, EPGDecoderBlock, EPGEncoderBlock
from .presets import PAPER_PARAMETERS_M, PRESETS, get_preset
from .rcm_encoder import RCMEncoderModel, RCMEncoderOutput
from .transformer_epg import EPGTransformer2DModel

_CLASSES = {cls.__name__: cls for cls in (EPGTransformer2DModel, RCMEncoderModel)}


def model_from_preset(name: str, **overrides):
    """Instantiate preset ``name`` (e.g. ``"EPG-XL/16"``, ``"RCM-B/16"``) with optional config overrides."""
    class_name, config = get_preset(name)
    return _CLASSES[class_name](**{**config, **overrides})


__all__ = [
    "EPGAttention",
    "EPGAttnProcessor",
    "EPGDecoderBlock",
    "EPGEncoderBlock",
    "EPGTransformer2DModel",
    "PAPER_PARAMETERS_M",
    "PRESETS",
    "RCMEncoderModel",
    "RCMEncoderOutput",
    "get_preset",
    "model_from_preset",
]
