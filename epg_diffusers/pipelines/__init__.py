"""Pipelines: EPGPipeline (diffusion and consistency sampling, autoguidance, image-to-image)."""

from .inputs import NonFiniteSampleError
from .labels import IMAGENET_MEAN, IMAGENET_STD_X2, imagenet_id2label
from .pipeline_epg import EPGPipeline, EPGPipelineOutput

__all__ = [
    "EPGPipeline", "EPGPipelineOutput", "IMAGENET_MEAN", "IMAGENET_STD_X2", "NonFiniteSampleError", "imagenet_id2label",
]
