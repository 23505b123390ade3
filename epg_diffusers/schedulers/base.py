"""What both EPG schedulers share: the shifted sigma grid, step-index bookkeeping and x0 from F."""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from .. import sigmas as sm


@dataclass
class EPGSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor`): the sample for the next model evaluation (or the result after the last).
        pred_original_sample (`torch.Tensor`): the x0 estimate D(x, sigma) of this evaluation.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class EPGSchedulerBase:
    """Shared machinery; subclasses build ``self.sigmas`` (one more entry than ``self.timesteps``).

    Subclasses also derive from ``SchedulerMixin`` and ``ConfigMixin`` in their own module: diffusers' pipeline
    loader looks those base classes up in the module named in ``model_index.json``.
    """

    sigmas: torch.Tensor = None
    timesteps: torch.Tensor = None

    def _check_config(self):
        if self.config.prediction_type not in sm.PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {sm.PREDICTION_TYPES}, got {self.config.prediction_type!r}.")
        if not 0 < self.config.sigma_min < self.config.sigma_max:
            raise ValueError(f"need 0 < `sigma_min` < `sigma_max`, got {self.config.sigma_min}, {self.config.sigma_max}.")
        sm.resolution_shift(self.config.image_size)

    @property
    def sigma_shift(self) -> float:
        """The resolution shift H / 64 applied to every sigma of this scheduler."""
        return sm.resolution_shift(self.config.image_size)

    @property
    def init_noise_sigma(self) -> float:
        """x_T = init_noise_sigma * eps: the first (shifted) sigma, 320 at 256 px with the default grid."""
        return float(self.sigmas[0]) if self.sigmas is not None else self.config.sigma_max * self.sigma_shift

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start the loop at ``timesteps[begin_index]`` (diffusers convention; no device sync per step)."""
        self._begin_index = begin_index
        self._step_index = begin_index

    def _unshifted_grid(self, num_inference_steps: int | None, sigmas) -> torch.Tensor:
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("pass exactly one of `num_inference_steps` and `sigmas`.")
        if sigmas is not None:
            grid = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
            if grid.numel() < 1 or not torch.isfinite(grid).all() or not torch.all(grid > 0) or not torch.all(
                    grid[1:] < grid[:-1]):
                raise ValueError(f"`sigmas` must be finite, positive and strictly decreasing, got {grid.tolist()}.")
            return grid
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        return None

    def _finish_set_timesteps(self, eval_sigmas: torch.Tensor, final_sigma: torch.Tensor, device):
        self.sigmas = torch.cat([eval_sigmas, final_sigma.reshape(1)])  # kept on CPU
        self.timesteps = sm.sigma_to_time(eval_sigmas).to(device)
        self.num_inference_steps = len(self.timesteps)
        self.set_begin_index(0)

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """c_in(sigma) * sample for the current evaluation (EDM Table 1)."""
        self._require_timesteps()
        return sample * sm.c_in(self.sigmas[self._step_index], self.config.sigma_data).to(sample.device, sample.dtype)

    def _require_timesteps(self):
        if self.timesteps is None:
            raise ValueError("call `set_timesteps` before sampling.")
        if self._step_index >= len(self.timesteps):
            raise ValueError("all timesteps are used up; call `set_timesteps` again.")

    def _denoise(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x0 = D(x, sigma) from F, clamped to the reference's [-r, r] when ``clip_sample``."""
        sigma = sigma.to(sample.device)
        x0 = sm.denoised_from_output(
            model_output.to(sample.dtype), sample, sigma, self.config.prediction_type,
            self.config.sigma_min * self.sigma_shift, self.config.sigma_data,
        )
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0

    def __len__(self):
        return len(self.timesteps) if self.timesteps is not None else 0
