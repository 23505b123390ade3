"""The pipelines this project ships (``pipelines/`` of the repository), and how entry points load a pipeline:
the one they are given or, when none is named, the shipped default."""

import os
from pathlib import Path

import torch

from .pipelines import EPGPipeline

DIFFUSION_PIPELINE = "epg-digits-diffusion"  # guided Heun (EPGHeunScheduler): the default of every entry point
CONSISTENCY_PIPELINE = "epg-digits-consistency"  # one-step / few-step (EPGConsistencyScheduler)
# The repository's pipelines/ folder, found next to the package: present in a checkout and with `pip install -e .`.
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_pipeline(name: str = DIFFUSION_PIPELINE, argument: str = "pipeline") -> str:
    """The folder of the shipped pipeline ``name``, for an entry point whose ``argument`` named no model."""
    folder = PIPELINES_DIR / name
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no `{argument}` was given and the default pipeline {name!r} is not in {PIPELINES_DIR}: the shipped "
            f"pipelines come with a checkout of the epg-diffusers repository installed with `pip install -e .`. "
            f"Pass `{argument}`: a saved pipeline folder or a Hub repo id."
        )
    return str(folder)


def load_pipeline(pipeline: str, dtype: str = "fp32", revision: str | None = None):
    """``EPGPipeline.from_pretrained`` of a folder or Hub repo id, with clear errors for a missing pipeline."""
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {tuple(DTYPES)}, got {dtype!r}.")
    if os.path.isdir(pipeline) and not os.path.isfile(os.path.join(pipeline, "model_index.json")):
        raise ValueError(f"`pipeline`={pipeline!r} is a folder without model_index.json, not a saved pipeline.")
    try:
        pipe = EPGPipeline.from_pretrained(pipeline, dtype=DTYPES[dtype], revision=revision)
    except Exception as error:  # not found locally nor on the Hub, offline, corrupt files
        raise ValueError(f"cannot load `pipeline`={pipeline!r}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe
