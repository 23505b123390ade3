"""The pipelines this project ships (``pipelines/`` of the repository), and how entry points load a pipeline:
the one they are given or, when none is named, the shipped default."""

import os
from importlib import resources
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from .pipelines import EPGPipeline

DIFFUSION_PIPELINE = "epg-digits-diffusion"  # guided Heun (EPGHeunScheduler): the default of every entry point
CONSISTENCY_PIPELINE = "epg-digits-consistency"  # one-step / few-step (EPGConsistencyScheduler)

def shipped_dir() -> Path:
    """The repository's ``pipelines/`` folder: inside the installed package (``epg_diffusers/shipped``, from a wheel
    or ``pip install .``), else next to the package (a checkout, or ``pip install -e .``)."""
    installed = Path(str(resources.files(__package__) / "shipped"))
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "pipelines"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_pipeline(name: str = DIFFUSION_PIPELINE, argument: str = "pipeline") -> str:
    """The folder of the shipped pipeline ``name``, for an entry point whose ``argument`` named no model."""
    folder = shipped_dir() / name
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no `{argument}` was given and the default pipeline {name!r} is not in {shipped_dir()}: this install of "
            f"epg-diffusers lacks its shipped pipelines. Pass `{argument}`: a saved pipeline folder or a Hub repo id."
        )
    return str(folder)


def load_pipeline(pipeline: str, dtype: str = "fp32", revision: str | None = None):
    """``EPGPipeline.from_pretrained`` of a folder or Hub repo id, with clear errors for a missing pipeline."""
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {tuple(DTYPES)}, got {dtype!r}.")
    if os.path.isdir(pipeline) and not os.path.isfile(os.path.join(pipeline, "model_index.json")):
        raise ValueError(f"`pipeline`={pipeline!r} is a folder without model_index.json, not a saved pipeline.")
    shown = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # commands print their own one-line summary (or error)
    try:
        pipe = EPGPipeline.from_pretrained(pipeline, dtype=DTYPES[dtype], revision=revision)
    except Exception as error:  # not found locally nor on the Hub, offline, corrupt files
        raise ValueError(f"cannot load `pipeline`={pipeline!r}: {error}") from error
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe
