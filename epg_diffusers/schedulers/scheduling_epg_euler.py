"""First-order samplers on the shifted Karras grid: Euler, Euler-ancestral and Euler-SDE (the reference's)."""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from .. import sigmas as sm
from .base import EPGSchedulerBase


class EPGEulerScheduler(EPGSchedulerBase, SchedulerMixin, ConfigMixin):
    """Euler on the probability-flow ODE: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d(x_i, sigma_i), d = (x - D) / sigma.

    ``num_inference_steps`` Karras points (rho 7, unshifted, then x H/64), one network evaluation per interval:
    n - 1 evaluations ending at sigma_min * H/64 (the reference), or n ending at 0 (``final_sigmas_type="zero"``).

    Args:
        sigma_min (`float`, defaults to 0.002), sigma_max (`float`, defaults to 80.0): unshifted grid ends.
        sigma_data (`float`, defaults to 0.5): data standard deviation.
        rho (`float`, defaults to 7.0): Karras grid exponent.
        image_size (`int`, defaults to 256): image resolution; every sigma is multiplied by image_size / 64.
        prediction_type (`str`, defaults to `"sample"`): `"sample"` or `"boundary_condition"`.
        final_sigmas_type (`str`, defaults to `"sigma_min"`): `"sigma_min"` (reference) or `"zero"`.
        clip_sample (`bool`, defaults to `True`), clip_sample_range (`float`, defaults to 1.0): the x0 clamp.
    """

    order = 1
    default_num_inference_steps = 50  # the reference's configs sample Euler with 50 points

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
        self._check_config()

    def _update(self, sample, x0, sigma, sigma_next, generator) -> torch.Tensor:
        """x at ``sigma_next`` from x at ``sigma`` and its x0 estimate (deterministic Euler)."""
        return sample + (sample - x0) / sigma * (sigma_next - sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """One interval: x0 from F at sigma_i, then the update to sigma_{i+1}."""
        self._require_timesteps(timestep)
        index = self._step_index
        sample = sample.float()
        sigma, sigma_next = (s.to(sample.device) for s in self.sigmas[index : index + 2])
        x0 = self._denoise(model_output, sample, sigma)
        return self._finish(self._update(sample, x0, sigma, sigma_next, generator), x0, return_dict)


class EPGEulerAncestralScheduler(EPGEulerScheduler):
    """Euler-ancestral: an Euler step to sigma_down, then fresh noise of std sigma_up (``sm.ancestral_sigmas``).

    The standard-normal z_i is drawn from ``generator`` after each evaluation (one draw per step), as the reference.

    Args:
        Those of [`EPGEulerScheduler`].
    """

    def _update(self, sample, x0, sigma, sigma_next, generator) -> torch.Tensor:
        sigma_up, sigma_down = sm.ancestral_sigmas(sigma, sigma_next)
        x = sample + (sample - x0) / sigma * (sigma_down - sigma)
        z = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        return x + z * sigma_up


class EPGEulerSDEScheduler(EPGEulerScheduler):
    """Euler-Maruyama on the reverse SDE, as the reference's ``euler_sde``:
    x_{i+1} = x_i + 2 d (sigma_{i+1} - sigma_i) + sqrt(2 sigma_i (sigma_i - sigma_{i+1})) z_i.

    Args:
        Those of [`EPGEulerScheduler`].
    """

    def _update(self, sample, x0, sigma, sigma_next, generator) -> torch.Tensor:
        z = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        return sample + 2 * (sample - x0) / sigma * (sigma_next - sigma) + (2 * sigma * (sigma - sigma_next)) ** 0.5 * z
