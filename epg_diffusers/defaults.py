"""The pipelines this project ships (``pipelines/`` of the repository), how entry points load a pipeline (the one
they are given or, when none is named, the shipped default), and the sampling options they share (``--sampler``,
``--preset``, autoguidance)."""

import argparse
import contextlib
import os
from importlib import resources
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from .models import EPGTransformer2DModel
from .pipelines import EPGPipeline
from .schedulers import SAMPLERS, scheduler_for

DIFFUSION_PIPELINE = "epg-digits-diffusion"  # guided Heun (EPGHeunScheduler): the default of every entry point
CONSISTENCY_PIPELINE = "epg-digits-consistency"  # one-step / few-step (EPGConsistencyScheduler)
SAMPLING_PRESETS = {  # `--preset NAME`: a sampler and its steps (an explicit --sampler or --num-inference-steps wins)
    "paper": ("heun", 32),  # the paper's guided Heun: 74 network evaluations with interval guidance
    "fast": ("dpm++3m", 12),  # DPM-Solver++ 3M: 14 evaluations, paper's Fréchet distance on the digits (BENCHMARKS.md)
}


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


@contextlib.contextmanager
def quiet_loading():
    """No diffusers loading progress bar: commands print their own one-line summary (or error)."""
    shown = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()


def load_pipeline(pipeline: str, dtype: str = "fp32", revision: str | None = None):
    """``EPGPipeline.from_pretrained`` of a folder or Hub repo id, with clear errors for a missing pipeline."""
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {tuple(DTYPES)}, got {dtype!r}.")
    if os.path.isdir(pipeline) and not os.path.isfile(os.path.join(pipeline, "model_index.json")):
        raise ValueError(f"`pipeline`={pipeline!r} is a folder without model_index.json, not a saved pipeline.")
    try:
        with quiet_loading():
            pipe = EPGPipeline.from_pretrained(pipeline, dtype=DTYPES[dtype], revision=revision)
    except Exception as error:  # not found locally nor on the Hub, offline, corrupt files
        raise ValueError(f"cannot load `pipeline`={pipeline!r}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--sampler``, ``--preset``, ``--s-churn`` and autoguidance, shared by ``epg sample`` and ``epg grid``."""
    from .cli import finite_float

    parser.add_argument("--sampler", choices=list(SAMPLERS), default=None, help="default: the pipeline's own")
    parser.add_argument("--preset", choices=list(SAMPLING_PRESETS), default=None,
                        help="; ".join(f"{name}: {sampler}, {steps} steps" for name, (sampler, steps)
                                       in SAMPLING_PRESETS.items()))
    parser.add_argument("--s-churn", type=finite_float, default=None, help="EDM churn of heun / edm-sde (default 0)")
    parser.add_argument("--autoguidance-model", metavar="PATH_OR_ID", default=None,
                        help="a weaker model (pipeline or transformer folder, or repo id) for autoguidance")
    parser.add_argument("--autoguidance-scale", type=finite_float, default=None,
                        help="autoguidance w: G = F + w (F - F_weak); exclusive with --guidance-scale")


def configure_sampling(pipe, args) -> int | None:
    """Set the sampler and the autoguidance model of ``args`` on ``pipe``; returns the steps (None: the defaults)."""
    sampler, steps = SAMPLING_PRESETS[args.preset] if args.preset else (None, None)
    sampler = args.sampler or sampler
    if args.s_churn is not None and (sampler or "") not in ("heun", "edm-sde"):
        raise ValueError("`s_churn` needs `--sampler heun` or `--sampler edm-sde`.")
    if sampler:
        options = {} if args.s_churn is None else {"s_churn": args.s_churn}
        pipe.scheduler = scheduler_for(sampler, pipe.scheduler.config, **options)
    if args.autoguidance_model:
        weak = load_transformer(args.autoguidance_model, pipe.transformer.dtype, args.revision)
        pipe.register_modules(guidance_transformer=weak.to(pipe.device))
    return args.num_inference_steps or steps


def load_transformer(source: str, dtype: torch.dtype, revision: str | None = None) -> EPGTransformer2DModel:
    """The transformer of a pipeline folder or repo id, or a transformer folder (``--autoguidance-model``)."""
    try:
        with quiet_loading():
            if os.path.isfile(os.path.join(source, "config.json")):
                return EPGTransformer2DModel.from_pretrained(source, dtype=dtype).eval()
            return EPGPipeline.from_pretrained(source, dtype=dtype, revision=revision).transformer.eval()
    except Exception as error:
        raise ValueError(f"cannot load `autoguidance_model`={source!r}: {error}") from error
