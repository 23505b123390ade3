"""EPGHeunScheduler: deterministic second-order Heun on the shifted Karras grid (EDM Algorithm 1, no churn)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .. import sigmas as sm
from .base import EPGSchedulerBase, EPGSchedulerOutput


class EPGHeunScheduler(EPGSchedulerBase, SchedulerMixin, ConfigMixin):
    """Heun sampler of the EPG diffusion models.

    ``num_inference_steps`` Karras points sigma_0 = sigma_max ... sigma_{n-1} = sigma_min (rho 7, unshifted,
    then x H/64). Each interval takes an Euler step and a Heun correction, so ``timesteps`` lists every
    network evaluation: [t_0, t_1, t_1, t_2, ..., t_{n-1}], with t = 250 ln sigma.

    * ``final_sigmas_type="sigma_min"`` (the reference): no trailing zero; the correction runs on every
      interval, 2(n - 1) evaluations, and the result stays at sigma_min * H/64.
    * ``final_sigmas_type="zero"`` (EDM): one more Euler step from sigma_min to 0, 2n - 1 evaluations.

    Args:
        sigma_min (`float`, defaults to 0.002): smallest unshifted sigma.
        sigma_max (`float`, defaults to 80.0): largest unshifted sigma.
        sigma_data (`float`, defaults to 0.5): data standard deviation in c_in / c_skip / c_out.
        rho (`float`, defaults to 7.0): Karras grid exponent.
        image_size (`int`, defaults to 256): image resolution; every sigma is multiplied by image_size / 64.
        prediction_type (`str`, defaults to `"sample"`): `"sample"` (F is x0, diffusion fine-tuning) or
            `"boundary_condition"` (x0 = c_skip x + c_out F with shifted sigma_min, consistency fine-tuning).
        final_sigmas_type (`str`, defaults to `"sigma_min"`): `"sigma_min"` (reference) or `"zero"` (EDM).
        clip_sample (`bool`, defaults to `True`): clamp x0 to [-clip_sample_range, clip_sample_range] at every
            evaluation, as the reference does (faithful mode).
        clip_sample_range (`float`, defaults to 1.0): the clamp bound.
    """

    order = 2
    default_num_inference_steps = 32  # Karras points of the paper's sampler (74 evaluations with guidance)

    @register_to_config
    def __init__(
        self,
        sigma_min: float = sm.SIGMA_MIN,
        sigma_max: float = sm.SIGMA_MAX,
        sigma_data: float = sm.SIGMA_DATA,
        rho: float = sm.RHO,
        image_size: int = 256,
        prediction_type: str = "sample",
        final_sigmas_type: str = "sigma_min",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
    ):
        if final_sigmas_type not in ("sigma_min", "zero"):
            raise ValueError(f"`final_sigmas_type` must be 'sigma_min' or 'zero', got {final_sigmas_type!r}.")
        self._check_config()
        self._begin_index = self._step_index = 0
        self._derivative = self._dt = self._first_sample = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None):
        """Build the evaluation schedule from ``num_inference_steps`` Karras points or custom unshifted ``sigmas``."""
        grid = self._unshifted_grid(num_inference_steps, sigmas)
        if grid is None:
            grid = sm.karras_sigmas(num_inference_steps, self.config.sigma_min, self.config.sigma_max, self.config.rho)
        if self.config.final_sigmas_type == "sigma_min" and len(grid) < 2:
            raise ValueError(
                "`num_inference_steps` must be >= 2 with final_sigmas_type='sigma_min' (one interval needs two points)."
            )
        grid = grid * self.sigma_shift
        if self.config.final_sigmas_type == "sigma_min":
            eval_sigmas = torch.cat([grid[:1], grid[1:-1].repeat_interleave(2), grid[-1:]])
            final = grid[-1]
        else:
            eval_sigmas = torch.cat([grid[:1], grid[1:].repeat_interleave(2)])
            final = torch.zeros(())
        self._derivative = self._dt = self._first_sample = None
        self._finish_set_timesteps(eval_sigmas, final, device)

    @property
    def state_in_first_order(self) -> bool:
        """True when the next evaluation is an Euler (predictor) evaluation."""
        return self._derivative is None

    def step(
        self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> EPGSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Advance one evaluation: an Euler predictor, or the Heun correction of the interval it opened."""
        self._require_timesteps()
        index = self._step_index
        sample = sample.float()
        if self.state_in_first_order:
            sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
            x0 = self._denoise(model_output, sample, sigma)
            derivative = (sample - x0) / sigma.to(sample.device)  # d = (x - D(x, sigma)) / sigma
            dt = (sigma_next - sigma).to(sample.device)
            prev_sample = sample + derivative * dt
            if sigma_next > 0:  # open the interval; the next evaluation corrects it
                self._derivative, self._dt, self._first_sample = derivative, dt, sample
        else:
            sigma_next = self.sigmas[index]
            x0 = self._denoise(model_output, sample, sigma_next)
            derivative = (sample - x0) / sigma_next.to(sample.device)
            prev_sample = self._first_sample + (self._derivative + derivative) / 2 * self._dt  # Heun average
            self._derivative = self._dt = self._first_sample = None
        self._step_index += 1
        if not return_dict:
            return (prev_sample, x0)
        return EPGSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
