"""epg-diffusers: EPG pixel-space diffusion and consistency models for Hugging Face diffusers."""

from .models import EPGTransformer2DModel, RCMEncoderModel, get_preset, model_from_preset
from .pipelines import EPGPipeline, EPGPipelineOutput
from .schedulers import EPGConsistencyScheduler, EPGHeunScheduler
from .version import __version__

__all__ = [
    "EPGConsistencyScheduler",
    "EPGHeunScheduler",
    "EPGPipeline",
    "EPGPipelineOutput",
    "EPGTransformer2DModel",
    "RCMEncoderModel",
    "get_preset",
    "model_from_preset",
]
