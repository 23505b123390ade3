"""EPGHeunScheduler: second-order Heun on the shifted Karras grid (EDM Algorithm 1; churn of Algorithm 2 optional)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .. import sigmas as sm
from .base import EPGSchedulerBase


class EPGHeunScheduler(EPGSchedulerBase, SchedulerMixin, ConfigMixin):
    """Heun sampler of the EPG diffusion models (the paper's: 32 points, no churn).

    ``num_inference_steps`` Karras points sigma_0 = sigma_max ... sigma_{n-1} = sigma_min (rho 7, unshifted,
    then x H/64). Each interval takes an Euler step and a Heun correction, so ``timesteps`` lists every
    network evaluation: [t_0, t_1, t_1, t_2, ..., t_{n-1}], with t = 250 ln sigma.

    * ``final_sigmas_type="sigma_min"`` (the reference): no trailing zero; the correction runs on every
      interval, 2(n - 1) evaluations, and the result stays at sigma_min * H/64.
    * ``final_sigmas_type="zero"`` (EDM): one more Euler step from sigma_min to 0, 2n - 1 evaluations.
    * ``s_churn`` > 0 (the reference's Heun with churn): before each interval, a standard-normal z (one draw per
      interval from ``generator``) lifts x to sigma_hat = sigma_i (1 + gamma), gamma = min(s_churn / (n - 1),
      sqrt 2 - 1) while s_tmin <= sigma_i / shift <= s_tmax, and the interval's first evaluation is made there.

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
        s_churn (`float`, defaults to 0.0): EDM's S_churn (0: deterministic, the paper's sampler).
        s_tmin (`float`, defaults to 0.0), s_tmax (`float`, defaults to inf): unshifted sigma range of the churn.
        s_noise (`float`, defaults to 1.0): EDM's S_noise, the scale of the churn noise.
    """

    order = 2
    churn_divisor_offset = -1  # gamma = S_churn / (n - 1), n the number of grid points (the reference's Heun)

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
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ):
        self._check_config()
        self._reset()

    def _schedule(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Interval i (from grid point i): its Euler evaluation at sigma_hat_i, then its correction at sigma_{i+1}."""
        zero = self.config.final_sigmas_type == "zero"
        if len(grid) < 2 and not zero:
            raise ValueError(
                "`num_inference_steps` must be >= 2 with final_sigmas_type='sigma_min' (one interval needs two points)."
            )
        points = torch.cat([grid, torch.zeros(1)]) if zero else grid
        divisor = len(grid) + self.churn_divisor_offset
        gammas = [sm.churn_gamma(float(s) / self.sigma_shift, self.config.s_churn, self.config.s_tmin,
                                 self.config.s_tmax, max(divisor, 1)) for s in points[:-1]]
        self._churn = [(points[i], points[i] * (1 + gamma)) for i, gamma in enumerate(gammas)]  # (sigma_i, sigma_hat_i)
        self._ends = points[1:]  # where each interval ends
        evals, starts = [], []
        for i in range(len(points) - 1):
            starts.append(len(evals))
            evals.append(self._churn[i][1])
            if points[i + 1] > 0 and self._corrects(i, len(points) - 1):
                evals.append(points[i + 1])
        return torch.stack(evals), self._final_sigma(grid), starts

    def _corrects(self, interval: int, intervals: int) -> bool:
        """Whether ``interval`` gets a Heun correction (every interval ending above sigma = 0, for Heun)."""
        return True

    def _draws_noise(self) -> bool:
        return self.config.s_churn > 0

    def _reset(self):
        self._derivative = self._dt = self._first_sample = None

    @property
    def state_in_first_order(self) -> bool:
        """True when the next evaluation is an Euler (predictor) evaluation."""
        return self._derivative is None

    def churn(self, sample: torch.Tensor, timestep=None, generator=None) -> torch.Tensor:
        """At an interval's start: x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z (EDM Algorithm 2, lines 5-6)."""
        self._require_timesteps(timestep)
        if not self.state_in_first_order or not self._draws_noise():
            return sample
        interval = self.interval_starts.index(self._step_index)
        sigma, sigma_hat = self._churn[interval]
        z = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        return sample + (sigma_hat**2 - sigma**2).to(sample.device) ** 0.5 * self.config.s_noise * z

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """Advance one evaluation: an Euler predictor, or the Heun correction of the interval it opened."""
        self._require_timesteps(timestep)
        index = self._step_index
        sample = sample.float()
        if self.state_in_first_order:  # at an interval's start, sigma_hat_i (sigma_i without churn)
            sigma, sigma_next = self.sigmas[index], self._ends[self.interval_starts.index(index)]
            x0 = self._denoise(model_output, sample, sigma)
            derivative = (sample - x0) / sigma.to(sample.device)  # d = (x - D(x, sigma)) / sigma
            dt = (sigma_next - sigma).to(sample.device)
            prev_sample = sample + derivative * dt
            if index + 1 < len(self.timesteps) and index + 1 not in self.interval_starts:  # a correction follows
                self._derivative, self._dt, self._first_sample = derivative, dt, sample
        else:
            sigma_next = self.sigmas[index]
            x0 = self._denoise(model_output, sample, sigma_next)
            derivative = (sample - x0) / sigma_next.to(sample.device)
            prev_sample = self._first_sample + (self._derivative + derivative) / 2 * self._dt  # Heun average
            self._reset()
        return self._finish(prev_sample, x0, return_dict)
