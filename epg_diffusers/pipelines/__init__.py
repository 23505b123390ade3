"""Pipelines: EPGPipeline (diffusion and consistency sampling)."""

from .labels import IMAGENET_MEAN, IMAGENET_STD_X2, imagenet_id2label
from .pipeline_epg import EPGPipeline, EPGPipelineOutput, NonFiniteSampleError

__all__ = ["EPGPipeline", "EPGPipelineOutput", "NonFiniteSampleError", "IMAGENET_MEAN", "IMAGENET_STD_X2", "imagenet_id2label"]
