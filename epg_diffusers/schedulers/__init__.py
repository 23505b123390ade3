"""Schedulers: the paper's guided Heun, the reference's other samplers, consistency sampling, and diffusers'
multistep solvers adapted to EPG's sigmas."""

from .base import EPGSchedulerOutput
from .scheduling_epg_consistency import EPGConsistencyScheduler
from .scheduling_epg_edm_sde import EPGEDMSDEScheduler
from .scheduling_epg_euler import EPGEulerAncestralScheduler, EPGEulerScheduler, EPGEulerSDEScheduler
from .scheduling_epg_heun import EPGHeunScheduler
from .scheduling_epg_multistep import EPGDPMSolverMultistepScheduler, EPGUniPCMultistepScheduler

__all__ = [
    "EPGConsistencyScheduler",
    "EPGDPMSolverMultistepScheduler",
    "EPGEDMSDEScheduler",
    "EPGEulerAncestralScheduler",
    "EPGEulerSDEScheduler",
    "EPGEulerScheduler",
    "EPGHeunScheduler",
    "EPGSchedulerOutput",
    "EPGUniPCMultistepScheduler",
]
