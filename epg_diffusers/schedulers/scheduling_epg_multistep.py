"""diffusers' multistep solvers (DPM-Solver++, UniPC) driving EPG models: only the adapter is written here.

EPG's side (the shifted Karras grid, c_in, network time 250 ln sigma, x0 = F or the boundary condition, the
clamp) comes from :class:`EPGSchedulerBase`; the update rule is diffusers' own solver, handed the grid and the
clamped x0 at every step. DPM-Solver++ works on the EDM (variance-exploding) state as it is; UniPC works on the
variance-preserving state x / sqrt(1 + sigma^2), so the adapter converts on the way in and out.
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_edm_dpmsolver_multistep import EDMDPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .. import sigmas as sm
from .base import EPGSchedulerBase


class _DPMSolverOnX0(EDMDPMSolverMultistepScheduler):
    """diffusers' EDM DPM-Solver++, handed x0 directly (EPG's x0 already includes the preconditioning and clamp)."""

    def precondition_outputs(self, sample, model_output, sigma):
        return model_output


class _MultistepAdapter(EPGSchedulerBase):
    """Runs a diffusers solver (``_solver()``) on the EPG schedule: one network evaluation per grid point."""

    order = 1
    default_num_inference_steps = 20

    def _solver(self):
        raise NotImplementedError

    def _grid(self, num_inference_steps, sigmas):
        if sigmas is not None:
            raise ValueError(f"{type(self).__name__} takes `num_inference_steps`, not custom `sigmas`.")
        return super()._grid(num_inference_steps, None)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None):
        """The shifted Karras grid of ``num_inference_steps`` points, handed to the solver as its sigmas."""
        super().set_timesteps(num_inference_steps, device, sigmas)
        self._inner = self._solver()
        self._inner.set_timesteps(len(self.timesteps), device=device)  # resets the solver's history
        self._inner.sigmas, self._inner.timesteps = self.sigmas.clone(), self.timesteps.clone()

    def set_begin_index(self, begin_index: int = 0):
        super().set_begin_index(begin_index)
        self._inner.set_begin_index(begin_index)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """x0 from F at this sigma (EPG), then the solver's update to the next sigma (diffusers)."""
        self._require_timesteps(timestep)
        sample = sample.float()
        x0 = self._denoise(model_output, sample, self.sigmas[self._step_index])
        return self._finish(self._update(x0, timestep, sample, generator), x0, return_dict)


class EPGDPMSolverMultistepScheduler(_MultistepAdapter, SchedulerMixin, ConfigMixin):
    """DPM-Solver++ (2M by default, 3M with ``solver_order=3``, SDE with ``algorithm_type="sde-dpmsolver++"``) from
    diffusers' ``EDMDPMSolverMultistepScheduler``, on EPG's shifted Karras grid with EPG's x0.

    Args:
        sigma_min (`float`, defaults to 0.002), sigma_max (`float`, defaults to 80.0): unshifted grid ends.
        sigma_data (`float`, defaults to 0.5), rho (`float`, defaults to 7.0): EDM's.
        image_size (`int`, defaults to 256): image resolution; every sigma is multiplied by image_size / 64.
        prediction_type (`str`, defaults to `"sample"`): `"sample"` or `"boundary_condition"`.
        final_sigmas_type (`str`, defaults to `"zero"`): end at 0 (diffusers' default) or at sigma_min.
        clip_sample (`bool`, defaults to `True`), clip_sample_range (`float`, defaults to 1.0): the x0 clamp.
        solver_order (`int`, defaults to 2): 1, 2 (2M) or 3 (3M).
        algorithm_type (`str`, defaults to `"dpmsolver++"`): or `"sde-dpmsolver++"` (noise from `generator`).
    """

    @register_to_config
    def __init__(
        self,
        sigma_min: float = sm.SIGMA_MIN,
        sigma_max: float = sm.SIGMA_MAX,
        sigma_data: float = sm.SIGMA_DATA,
        rho: float = sm.RHO,
        image_size: int = 256,
        prediction_type: str = "sample",
        final_sigmas_type: str = "zero",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        solver_order: int = 2,
        algorithm_type: str = "dpmsolver++",
    ):
        self._check_config()
        self._solver()  # checks the solver's own arguments now rather than at the first call

    def _solver(self):
        return _DPMSolverOnX0(solver_order=self.config.solver_order, algorithm_type=self.config.algorithm_type,
                              final_sigmas_type=self.config.final_sigmas_type)

    def _update(self, x0, timestep, sample, generator):
        return self._inner.step(x0, timestep, sample, generator=generator, return_dict=False)[0]


class EPGUniPCMultistepScheduler(_MultistepAdapter, SchedulerMixin, ConfigMixin):
    """UniPC (predictor-corrector, ``solver_order`` 2 by default) from diffusers' ``UniPCMultistepScheduler`` with
    x0 prediction, on EPG's shifted Karras grid: the EDM state x is handed over as x / sqrt(1 + sigma^2).

    Args:
        Those of [`EPGDPMSolverMultistepScheduler`] but `algorithm_type`, and
        solver_type (`str`, defaults to `"bh2"`): UniPC's `"bh1"` or `"bh2"`.
    """

    @register_to_config
    def __init__(
        self,
        sigma_min: float = sm.SIGMA_MIN,
        sigma_max: float = sm.SIGMA_MAX,
        sigma_data: float = sm.SIGMA_DATA,
        rho: float = sm.RHO,
        image_size: int = 256,
        prediction_type: str = "sample",
        final_sigmas_type: str = "zero",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        solver_order: int = 2,
        solver_type: str = "bh2",
    ):
        self._check_config()
        self._solver()

    def _solver(self):
        return UniPCMultistepScheduler(solver_order=self.config.solver_order, solver_type=self.config.solver_type,
                                       prediction_type="sample", predict_x0=True,
                                       final_sigmas_type=self.config.final_sigmas_type)

    def _update(self, x0, timestep, sample, generator):
        alpha = (1 + self.sigmas[self._step_index : self._step_index + 2] ** 2) ** -0.5  # x_vp = alpha x (EDM's x)
        alpha = alpha.to(sample.device)
        return self._inner.step(x0, timestep, sample * alpha[0], return_dict=False)[0] / alpha[1]
