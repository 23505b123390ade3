"""Pipelines: EPGPipeline (diffusion and consistency sampling)."""

from .labels import IMAGENET_MEAN, IMAGENET_STD_X2, imagenet_id2label
from .inputs import NonFiniteSampleError
from .pipeline_epg import EPGPipeline, EPGPipelineOutput

__all__ = ["EPGPipeline", "EPGPipelineOutput", "NonFiniteSampleError", "IMAGENET_MEAN", "IMAGENET_STD_X2", "imagenet_id2label"]
