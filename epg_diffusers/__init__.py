"""epg-diffusers: EPG pixel-space diffusion and consistency models for Hugging Face diffusers."""

from .models import EPGTransformer2DModel, RCMEncoderModel, get_preset, model_from_preset
from .pipelines import EPGPipeline, EPGPipelineOutput
from .schedulers import (
    EPGConsistencyScheduler,
    EPGDPMSolverMultistepScheduler,
    EPGEDMSDEScheduler,
    EPGEulerAncestralScheduler,
    EPGEulerScheduler,
    EPGEulerSDEScheduler,
    EPGHeunScheduler,
    EPGUniPCMultistepScheduler,
)
from .version import __version__

__all__ = [
    "__version__",
    "EPGConsistencyScheduler",
    "EPGDPMSolverMultistepScheduler",
    "EPGEDMSDEScheduler",
    "EPGEulerAncestralScheduler",
    "EPGEulerSDEScheduler",
    "EPGEulerScheduler",
    "EPGHeunScheduler",
    "EPGPipeline",
    "EPGPipelineOutput",
    "EPGTransformer2DModel",
    "EPGUniPCMultistepScheduler",
    "RCMEncoderModel",
    "get_preset",
    "model_from_preset",
]
