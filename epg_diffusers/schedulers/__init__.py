"""Schedulers: the paper's guided Heun, the reference's other samplers, consistency sampling, and diffusers'
multistep solvers adapted to EPG's sigmas."""

from .base import EPGSchedulerOutput
from .scheduling_epg_consistency import EPGConsistencyScheduler
from .scheduling_epg_edm_sde import EPGEDMSDEScheduler
from .scheduling_epg_euler import EPGEulerAncestralScheduler, EPGEulerScheduler, EPGEulerSDEScheduler
from .scheduling_epg_heun import EPGHeunScheduler
from .scheduling_epg_multistep import EPGDPMSolverMultistepScheduler, EPGUniPCMultistepScheduler

# The sampler names of `epg sample --sampler`, `epg grid --sampler` and the demo: (scheduler class, its options).
SAMPLERS = {
    "heun": (EPGHeunScheduler, {}),
    "euler": (EPGEulerScheduler, {}),
    "euler-ancestral": (EPGEulerAncestralScheduler, {}),
    "euler-sde": (EPGEulerSDEScheduler, {}),
    "edm-sde": (EPGEDMSDEScheduler, {}),
    "dpm++2m": (EPGDPMSolverMultistepScheduler, {"solver_order": 2, "algorithm_type": "dpmsolver++"}),
    "dpm++3m": (EPGDPMSolverMultistepScheduler, {"solver_order": 3, "algorithm_type": "dpmsolver++"}),
    "dpm++2m-sde": (EPGDPMSolverMultistepScheduler, {"solver_order": 2, "algorithm_type": "sde-dpmsolver++"}),
    "unipc": (EPGUniPCMultistepScheduler, {}),
    "consistency": (EPGConsistencyScheduler, {}),
}


def scheduler_for(name: str, config, **options):
    """The scheduler of sampler ``name`` (``SAMPLERS``), keeping ``config``'s image size, sigmas and prediction type."""
    if name not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {sorted(SAMPLERS)}, got {name!r}.")
    cls, preset = SAMPLERS[name]
    return cls.from_config({k: v for k, v in dict(config).items() if k in ("sigma_min", "sigma_max", "sigma_data",
                            "rho", "image_size", "prediction_type", "clip_sample", "clip_sample_range")},
                           **preset, **options)


__all__ = [
    "SAMPLERS",
    "EPGConsistencyScheduler",
    "EPGDPMSolverMultistepScheduler",
    "EPGEDMSDEScheduler",
    "EPGEulerAncestralScheduler",
    "EPGEulerSDEScheduler",
    "EPGEulerScheduler",
    "EPGHeunScheduler",
    "EPGSchedulerOutput",
    "EPGUniPCMultistepScheduler",
    "scheduler_for",
]
