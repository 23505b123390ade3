"""What every EPG scheduler shares: the shifted sigma grid, the evaluation schedule, step indices and x0 from F.

A scheduler lists every network evaluation: ``timesteps[i]`` = 250 ln ``sigmas[i]`` (shifted sigma), and
``sigmas`` has one more entry, where the last step ends. Subclasses differ in how grid points become evaluations
(``_schedule``) and in ``step``; the stochastic ones draw their noise from the ``generator`` they are given (a list
gives every image its own). Churning schedulers also add noise before an interval's first evaluation
(:meth:`EPGSchedulerBase.churn`, called by the pipeline before each evaluation; identity for the others).
"""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from .. import sigmas as sm

SCHEDULER_NAMES = [  # every EPG scheduler: they share a config and swap with `from_config`
    "EPGHeunScheduler", "EPGEDMSDEScheduler", "EPGEulerScheduler", "EPGEulerAncestralScheduler", "EPGEulerSDEScheduler",
    "EPGConsistencyScheduler", "EPGDPMSolverMultistepScheduler", "EPGUniPCMultistepScheduler",
]


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
    """Shared machinery; subclasses define ``_schedule`` (evaluations from the grid) and ``step``.

    Subclasses also derive from ``SchedulerMixin`` and ``ConfigMixin`` in their own module: diffusers' pipeline
    loader looks those base classes up in the module named in ``model_index.json``.
    """

    _compatibles = SCHEDULER_NAMES
    default_num_inference_steps = 32  # Karras points of the paper's sampler
    sigmas: torch.Tensor = None
    timesteps: torch.Tensor = None
    interval_starts: list[int] = None  # evaluation index where each grid interval begins (image-to-image starts)
    _step_index = _begin_index = None

    def _check_config(self):
        if self.config.prediction_type not in sm.PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {sm.PREDICTION_TYPES}, got {self.config.prediction_type!r}.")
        if not 0 < self.config.sigma_min < self.config.sigma_max:
            raise ValueError(f"need 0 < `sigma_min` < `sigma_max`, got {self.config.sigma_min}, {self.config.sigma_max}.")
        if getattr(self.config, "final_sigmas_type", "sigma_min") not in ("sigma_min", "zero"):
            raise ValueError(f"`final_sigmas_type` must be 'sigma_min' or 'zero', got {self.config.final_sigmas_type!r}.")
        sm.resolution_shift(self.config.image_size)

    @property
    def sigma_shift(self) -> float:
        """The resolution shift H / 64 applied to every sigma of this scheduler."""
        return sm.resolution_shift(self.config.image_size)

    @property
    def init_noise_sigma(self) -> float:
        """x_T = init_noise_sigma * eps: the first (shifted) grid sigma, 320 at 256 px with the default grid."""
        return self._start_sigma if self.sigmas is not None else self.config.sigma_max * self.sigma_shift

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0):
        """Start at ``timesteps[begin_index]`` (diffusers' convention, e.g. for image-to-image)."""
        self._begin_index = begin_index

    def resolve_steps(self, *requested: int | None) -> int:
        """The steps to run: the first of ``requested`` that is set (a call's, then a pipeline's stored default),
        else this scheduler's ``default_num_inference_steps``. Every entry point resolves steps here."""
        return next((steps for steps in requested if steps is not None), self.default_num_inference_steps)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None):
        """``num_inference_steps`` Karras points (rho 7, unshifted, then x H/64) or custom unshifted ``sigmas``."""
        grid = self._grid(num_inference_steps, sigmas) * self.sigma_shift
        self._points, self._start_sigma = grid, float(grid[0])  # churn may evaluate an interval higher (sigma_hat)
        eval_sigmas, final, self.interval_starts = self._schedule(grid)
        self.sigmas = torch.cat([eval_sigmas, final.reshape(1)])  # kept on CPU
        self.timesteps = sm.sigma_to_time(eval_sigmas).to(device)
        self.num_inference_steps = len(self.timesteps)
        self._step_index = self._begin_index = None
        self._reset()

    def set_image_to_image_timesteps(self, num_inference_steps, strength: float, device=None, sigmas=None):
        """Image-to-image: the schedule cut to its last ``int(strength * intervals)`` intervals (diffusers'
        convention), their start marked with ``set_begin_index``. Returns the shifted sigma the image is noised to,
        or None when no interval runs (the image comes back as it is)."""
        self.set_timesteps(num_inference_steps, device, sigmas)
        intervals = len(self.interval_starts)
        run = min(int(intervals * strength), intervals)
        if run == 0:
            self.set_begin_index(len(self.timesteps))
            return None
        self.set_begin_index(self.interval_starts[intervals - run])
        return float(self._points[intervals - run])

    def _grid(self, num_inference_steps: int | None, sigmas) -> torch.Tensor:
        """The unshifted grid: custom ``sigmas`` (checked) or ``num_inference_steps`` Karras points."""
        if (num_inference_steps is None) == (sigmas is None):
            raise ValueError("pass exactly one of `num_inference_steps` and `sigmas`.")
        if sigmas is not None:
            grid = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
            if grid.numel() < 1 or not torch.isfinite(grid).all() or not torch.all(grid > 0) or not torch.all(
                    grid[1:] < grid[:-1]):
                raise ValueError(f"`sigmas` must be finite, positive and strictly decreasing, got {grid.tolist()}.")
            return grid
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        return sm.karras_sigmas(num_inference_steps, self.config.sigma_min, self.config.sigma_max, self.config.rho)

    def _final_sigma(self, grid: torch.Tensor) -> torch.Tensor:
        """Where sampling ends: the last grid point (the reference) or 0 (``final_sigmas_type="zero"``, EDM)."""
        return torch.zeros(()) if getattr(self.config, "final_sigmas_type", "sigma_min") == "zero" else grid[-1]

    def _schedule(self, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """One evaluation per interval (first-order samplers): the evaluation sigmas, the final sigma, interval starts."""
        points = grid if getattr(self.config, "final_sigmas_type", "sigma_min") == "zero" else grid[:-1]
        if len(points) < 1:
            raise ValueError("`num_inference_steps` must be >= 2 with final_sigmas_type='sigma_min' (one interval).")
        return points, self._final_sigma(grid), list(range(len(points)))

    def _reset(self):
        """Forget per-call state (multi-evaluation steps)."""

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """The evaluation index of ``timestep``; a timestep listed twice (a Heun point) starts at its second entry."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == torch.as_tensor(timestep, device=schedule.device, dtype=schedule.dtype)).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in this scheduler's timesteps.")
        return int(indices[1 if len(indices) > 1 else 0])

    def _require_timesteps(self, timestep=None):
        if self.timesteps is None:
            raise ValueError("call `set_timesteps` before sampling.")
        if self._step_index is None:
            if self._begin_index is not None or timestep is None:
                self._step_index = self._begin_index or 0
            else:
                self._step_index = self.index_for_timestep(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError("all timesteps are used up; call `set_timesteps` again.")

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """c_in(sigma) * sample for the current evaluation (EDM Table 1)."""
        self._require_timesteps(timestep)
        return sample * sm.c_in(self.sigmas[self._step_index], self.config.sigma_data).to(sample.device, sample.dtype)

    def churn(self, sample: torch.Tensor, timestep=None, generator=None) -> torch.Tensor:
        """Noise added before the evaluation at ``timestep`` (EDM's stochastic churn); the sample itself here."""
        return sample

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

    def _finish(self, prev_sample: torch.Tensor, x0: torch.Tensor, return_dict: bool):
        self._step_index += 1
        return EPGSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0) if return_dict else (prev_sample, x0)

    def network_evaluations(self, guidance_scale: float = 1.0, guidance_interval=None, autoguidance: bool = False,
                            begin: int = 0) -> int:
        """Network evaluations per image of the schedule set last, from ``begin``: one per entry of ``timesteps``;
        two where classifier-free guidance runs (both branches in one batched forward) and with autoguidance."""
        count = len(self.timesteps) - begin
        if autoguidance:
            return 2 * count
        guided = sm.guided_evaluations(self.sigmas[begin:-1] / self.sigma_shift, guidance_scale, guidance_interval)
        return count + sum(guided)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_sigma = x0 + sigma * noise at the (shifted) sigmas of ``timesteps`` (image-to-image, training)."""
        times = torch.as_tensor(timesteps).reshape(-1)
        if self.timesteps is not None and all((self.timesteps.cpu() == t).any() for t in times.cpu()):
            sigmas = torch.stack([self.sigmas[self.index_for_timestep(t.to(self.timesteps.device))] for t in times])
        else:
            sigmas = sm.time_to_sigma(times.float())
        sigmas = sigmas.to(original_samples.device, original_samples.dtype)
        return original_samples + sm.expand_like(sigmas, original_samples) * noise

    def __len__(self):
        return len(self.timesteps) if self.timesteps is not None else 0
