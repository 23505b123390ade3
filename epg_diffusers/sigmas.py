"""All of EPG's noise-level (sigma) math in one place.

Schedulers, pipelines and training objectives import these functions; nothing else re-derives them.
Conventions (reference notes section 3):

* sigmas are EDM noise levels, ``x_sigma = x0 + sigma * eps``;
* grids and curricula are defined in *unshifted* units and then multiplied by the resolution shift
  ``H / 64`` ("simple diffusion"): x4 at 256 px, x8 at 512 px;
* the network sees ``c_in(sigma) * x_sigma`` and the time input ``250 * ln(sigma)`` of the *shifted* sigma;
* everything is float32, as in the reference (a float64 grid moves samples beyond the parity tolerances).
"""

import torch

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5
PREDICTION_TYPES = ("sample", "boundary_condition", "sample_boundary_condition")
GUIDANCE_INTERVAL = (0.19, 1.61)  # unshifted (low, high] where the reference applies guidance


def resolution_shift(image_size: int) -> float:
    """Noise shift H / 64 applied to every sigma at resolution ``image_size``."""
    if image_size <= 0:
        raise ValueError(f"`image_size` must be positive, got {image_size}.")
    return image_size / 64.0


def karras_sigmas_at(
    index: torch.Tensor, num: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """Karras grid value at (possibly fractional or out-of-range) positions ``index`` of an ``num``-point grid.

    EDM Eq. (5): sigma_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    Index 0 is sigma_max (the noisiest); index N - 1 is sigma_min; index N continues the formula.
    """
    if num < 2:
        raise ValueError(f"A Karras grid needs at least 2 points, got `num`={num}.")
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    ramp = index.to(torch.float32) / (num - 1)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def karras_sigmas(num: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """``num`` descending Karras sigmas from sigma_max to sigma_min (EDM Eq. 5), float32, no trailing zero."""
    if num == 1:
        return torch.tensor([sigma_max], dtype=torch.float32)
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    ramp = torch.linspace(0, 1, num, dtype=torch.float32)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def c_in(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """Input scaling c_in = 1 / sqrt(sigma^2 + sigma_data^2) (EDM Table 1)."""
    return 1.0 / (sigma**2 + sigma_data**2) ** 0.5


def boundary_scalings(
    sigma: torch.Tensor, sigma_min: float, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of the consistency-model boundary condition (Song et al. 2023, Appendix C).

    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out = (sigma - sigma_min) * sigma_data / sqrt(sigma^2 + sigma_data^2),
    so that D(x, sigma_min) = x. EPG passes the *shifted* sigma_min (0.002 * H / 64).
    """
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def sample_boundary_scalings(sigma: torch.Tensor, sigma_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of an x-prediction network under the consistency boundary condition (``--init_from_pipeline``).

    c_skip = sigma_min^2 / ((sigma - sigma_min)^2 + sigma_min^2), c_out = 1 - c_skip: Song et al.'s c_skip with
    sigma_min in place of sigma_data, so D(x, sigma_min) = x while D = F within 1% once sigma >= 11 sigma_min.
    A consistency model initialised from an EPG diffusion model (D = F, x-prediction) therefore starts as that
    model's denoiser, as ECT's initialisation intends, and its network keeps predicting x0 rather than noise.
    """
    c_skip = sigma_min**2 / ((sigma - sigma_min) ** 2 + sigma_min**2)
    return c_skip, 1.0 - c_skip


def network_inputs(x_sigma: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a network sees in training: (c_in(sigma) x_sigma, 250 ln sigma) for per-sample or scalar shifted
    ``sigma`` (EDM Table 1; the schedulers' ``scale_model_input`` and ``timesteps`` give the same when sampling)."""
    sigma = sigma.expand(x_sigma.shape[0]) if sigma.ndim == 0 else sigma
    return expand_like(c_in(sigma), x_sigma) * x_sigma, sigma_to_time(sigma)


def sigma_to_time(sigma: torch.Tensor) -> torch.Tensor:
    """Network time input c_noise(sigma) = 1000 * 0.25 * ln(sigma) = 250 ln(sigma) (shifted sigma)."""
    return 250.0 * torch.log(sigma)


def time_to_sigma(time: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`sigma_to_time`."""
    return torch.exp(time / 250.0)


def guided_evaluations(sigmas: torch.Tensor, guidance_scale: float, guidance_interval) -> list[bool]:
    """Which evaluations, at unshifted ``sigmas``, run guidance: sigma in (low, high] (low exclusive, as the
    reference); every one when ``guidance_interval`` is None; none when ``guidance_scale`` is 1."""
    if guidance_scale == 1.0:
        return [False] * len(sigmas)
    if guidance_interval is None:
        return [True] * len(sigmas)
    low, high = guidance_interval
    return [low < sigma <= high for sigma in sigmas.tolist()]


def churn_gamma(sigma: float, s_churn: float, s_tmin: float, s_tmax: float, divisor: int) -> float:
    """EDM Algorithm 2's churn: gamma = min(S_churn / divisor, sqrt 2 - 1) while S_tmin <= sigma <= S_tmax, else 0.

    The evaluation is then made at sigma_hat = sigma (1 + gamma) after adding sqrt(sigma_hat^2 - sigma^2) S_noise z.
    The reference divides by n - 1 in its Heun sampler and by n (the number of points) in its EDM-SDE sampler.
    """
    return min(s_churn / divisor, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def ancestral_sigmas(sigma: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_up, sigma_down) of an ancestral step from ``sigma`` to ``sigma_next``:
    sigma_up = sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2), sigma_down = sqrt(sigma_next^2 - sigma_up^2)."""
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    return sigma_up, (sigma_next**2 - sigma_up**2) ** 0.5


def expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape per-sample ``values`` (B,) or a scalar to broadcast against ``x`` (B, C, H, W)."""
    return values.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) if values.ndim else values.to(x.dtype)


def denoised_from_output(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    prediction_type: str,
    sigma_min: float,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """x0 estimate D(x, sigma) from the raw network output F.

    ``"sample"`` (diffusion fine-tuning): D = F (x-prediction, reference notes section 5).
    ``"boundary_condition"`` (consistency fine-tuning): D = c_skip x + c_out F with the shifted sigma_min.
    ``"sample_boundary_condition"`` (consistency fine-tuning initialised from a diffusion pipeline):
    D = c_skip x + (1 - c_skip) F, :func:`sample_boundary_scalings`.
    """
    if prediction_type == "sample":
        return model_output
    if prediction_type == "boundary_condition":
        c_skip, c_out = boundary_scalings(sigma, sigma_min, sigma_data)
    elif prediction_type == "sample_boundary_condition":
        c_skip, c_out = sample_boundary_scalings(sigma, sigma_min)
    else:
        raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    return expand_like(c_skip, sample) * sample + expand_like(c_out, sample) * model_output

