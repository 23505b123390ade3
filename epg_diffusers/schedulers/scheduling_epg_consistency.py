"""EPGConsistencyScheduler: one-step and few-step consistency sampling (Song et al. 2023, Algorithm 1)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .. import sigmas as sm
from .base import EPGSchedulerBase, EPGSchedulerOutput


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
            c_out F) or `"sample"` (F is x0).
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
        self._begin_index = self._step_index = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None):
        """One step at sigma_max by default; ``num_inference_steps`` > 1 or custom unshifted ``sigmas`` for few-step."""
        grid = self._unshifted_grid(num_inference_steps, sigmas)
        if grid is None:
            grid = sm.karras_sigmas(num_inference_steps + 1, self.config.sigma_min, self.config.sigma_max, self.config.rho)
            grid = grid[:-1]
        if torch.any(grid <= self.config.sigma_min):
            raise ValueError(f"every sampling sigma must exceed `sigma_min`={self.config.sigma_min}, got {grid.tolist()}.")
        shift = self.sigma_shift
        self._finish_set_timesteps(grid * shift, torch.tensor(self.config.sigma_min * shift), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EPGSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Denoise at the current sigma; unless this is the last step, re-noise to the next sigma."""
        self._require_timesteps()
        index = self._step_index
        sample = sample.float()
        x0 = self._denoise(model_output, sample, self.sigmas[index])
        if index + 1 < len(self.timesteps):
            sigma_min = self.config.sigma_min * self.sigma_shift
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
            prev_sample = x0 + (self.sigmas[index + 1] ** 2 - sigma_min**2) ** 0.5 * noise
        else:
            prev_sample = x0
        self._step_index += 1
        if not return_dict:
            return (prev_sample, x0)
        return EPGSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
