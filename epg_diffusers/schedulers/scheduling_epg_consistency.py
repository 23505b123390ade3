"""EPGConsistencyScheduler: one-step and few-step consistency sampling (Song et al. 2023, Algorithm 1)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .. import sigmas as sm
from .base import EPGSchedulerBase


class EPGConsistencyScheduler(EPGSchedulerBase, SchedulerMixin, ConfigMixin):
    """Consistency sampler of the EPG one-step models.

    One step (the reference): x0 = D(x_T, sigma_max * H/64). Few steps (Algorithm 1 of Song et al. 2023,
    absent from the reference): denoise, then re-noise to the next sigma with
    x = x0 + sqrt(sigma_next^2 - sigma_min^2) z, and denoise again. Without custom ``sigmas``, n steps use the
    first n points of an (n + 1)-point Karras grid (dropping sigma_min). ``timesteps`` = 250 ln sigma.

    Args:
        sigma_min (`float`, defaults to 0.002): unshifted sigma_min of the boundary condition.
        sigma_max (`float`, defaults to 80.0): unshifted starting sigma.
        sigma_data (`float`, defaults to 0.5): data standard deviation.
        rho (`float`, defaults to 7.0): Karras grid exponent for few-step schedules.
        image_size (`int`, defaults to 256): image resolution; every sigma is multiplied by image_size / 64.
        prediction_type (`str`, defaults to `"boundary_condition"`): `"boundary_condition"` (x0 = c_skip x +
            c_out F), `"sample_boundary_condition"` (x0 = c_skip x + (1 - c_skip) F with an x-prediction c_skip,
            models fine-tuned from a diffusion pipeline) or `"sample"` (F is x0).
        clip_sample (`bool`, defaults to `True`): clamp x0 to [-clip_sample_range, clip_sample_range] (reference).
        clip_sample_range (`float`, defaults to 1.0): the clamp bound.
    """

    order = 1
    default_num_inference_steps = 1  # the one-step model

    @register_to_config
    def __init__(
        self,
        sigma_min: float = sm.SIGMA_MIN,
        sigma_max: float = sm.SIGMA_MAX,
        sigma_data: float = sm.SIGMA_DATA,
        rho: float = sm.RHO,
        image_size: int = 256,
        prediction_type: str = "boundary_condition",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
    ):
        self._check_config()

    def _grid(self, num_inference_steps: int | None, sigmas) -> torch.Tensor:
        """One step at sigma_max by default; n steps: the first n points of an (n + 1)-point Karras grid."""
        counted = sigmas is None and isinstance(num_inference_steps, int) and not isinstance(num_inference_steps, bool)
        if counted and num_inference_steps >= 1:
            grid = super()._grid(num_inference_steps + 1, None)[:-1]  # sigma_min itself is where sampling ends
        else:
            grid = super()._grid(num_inference_steps, sigmas)  # custom sigmas, or the error for a bad count
        if torch.any(grid <= self.config.sigma_min):
            raise ValueError(f"every sampling sigma must exceed `sigma_min`={self.config.sigma_min}, got {grid.tolist()}.")
        return grid

    def set_image_to_image_timesteps(self, num_inference_steps, strength: float, device=None, sigmas=None):
        """Image-to-image: the first step at the sigma ``strength`` places on the Karras curve (1: sigma_max, the full
        schedule's; 0: sigma_min, no step), then the few-step schedule below it. Returns that shifted sigma, or None
        when no step runs."""
        if sigmas is not None:
            return super().set_image_to_image_timesteps(None, strength, device, sigmas)
        config = self.config
        start = float(sm.karras_sigmas_at(torch.tensor(1.0 - strength), 2, config.sigma_min, config.sigma_max, config.rho))
        if start <= config.sigma_min * (1 + 1e-6):
            self.set_timesteps(1, device)
            self.set_begin_index(len(self.timesteps))
            return None
        grid = sm.karras_sigmas(num_inference_steps + 1, config.sigma_min, start, config.rho)[:-1]
        self.set_timesteps(device=device, sigmas=grid.tolist())
        self.set_begin_index(0)
        return float(self.sigmas[0])

    def _schedule(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """One evaluation per sigma; sampling ends at the (shifted) sigma_min of the boundary condition."""
        return grid, torch.tensor(self.config.sigma_min * self.sigma_shift), list(range(len(grid)))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """Denoise at the current sigma; unless this is the last step, re-noise to the next sigma."""
        self._require_timesteps(timestep)
        index = self._step_index
        sample = sample.float()
        x0 = self._denoise(model_output, sample, self.sigmas[index])
        if index + 1 < len(self.timesteps):
            sigma_min = self.config.sigma_min * self.sigma_shift
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
            prev_sample = x0 + (self.sigmas[index + 1] ** 2 - sigma_min**2) ** 0.5 * noise
        else:
            prev_sample = x0
        return self._finish(prev_sample, x0, return_dict)
