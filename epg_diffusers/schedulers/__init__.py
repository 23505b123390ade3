"""Schedulers: guided Heun for the diffusion models, one/few-step sampling for the consistency models."""

from .base import EPGSchedulerOutput
from .scheduling_epg_consistency import EPGConsistencyScheduler
from .scheduling_epg_heun import EPGHeunScheduler

__all__ = ["EPGConsistencyScheduler", "EPGHeunScheduler", "EPGSchedulerOutput"]
