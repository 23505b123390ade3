"""Noise-level curricula and temperature schedules of RCM pre-training (reference notes section 4)."""

import math

import torch

from .. import sigmas as sm


def num_scales(step: int, total_steps: int, s0: int = 20, s1: int = 1280) -> int:
    """Discretisation curriculum N(k) = min(s0 2^ceil(k / K'), s1) + 1, K' = ceil(K / log2(ceil(s1 / s0) + 1)).

    iCT's schedule with the reference's ceil (so the first stage lasts one step): 21, 41, ..., 1281.
    """
    stage_length = math.ceil(total_steps / math.log2(math.ceil(s1 / s0) + 1))
    return min(s0 * 2 ** math.ceil(step / stage_length), s1) + 1


def cosine_tau2(step: int, total_steps: int, start: float = 0.2, end: float = 0.1) -> float:
    """tau_2(k): quarter cosine from ``start`` down to ``start - end`` at k = 2K/3, then ``end`` (paper: 0.2 -> 0.1)."""
    progress = 1.5 * step / total_steps
    if progress > 1:
        return end
    return end * math.cos(math.pi / 2 * (progress + 1)) + start


def interpolated_tau(sigma_unshifted: torch.Tensor, tau1: float, tau2: float) -> torch.Tensor:
    """Per-sample tau(sigma) = tau1 (1 - u) + tau2 u with u = (sigma - sigma_min) / (sigma_max - sigma_min)."""
    u = (sigma_unshifted - sm.SIGMA_MIN) / (sm.SIGMA_MAX - sm.SIGMA_MIN)
    return tau1 * (1 - u) + tau2 * u


def draw_grid_index(num: int, generator: torch.Generator) -> int:
    """One index n ~ U{0, ..., N - 2} for the whole global batch (t_n and the cleaner t_{n+1})."""
    return int(torch.randint(0, num - 1, (), generator=generator))


def snap_to_karras_grid(sigma: torch.Tensor, num: int = 1280) -> torch.Tensor:
    """Index of the nearest point of the ``num``-point Karras grid for each (unshifted) sigma."""
    grid = sm.karras_sigmas(num).to(sigma.device)
    return (sigma[:, None] - grid[None]).abs().argmin(dim=1).clamp(max=num - 1)


def lognormal_sigmas(batch: int, p_mean: float, p_std: float, generator=None, device=None) -> torch.Tensor:
    """sigma = exp(P_mean + P_std n), n ~ N(0, 1) (EDM's proposal), unshifted."""
    return (p_mean + p_std * torch.randn(batch, generator=generator, device=device)).exp()


def ect_stage(step: int, stage_length: int = 100_000, first_stage: int = 100_000, delta: int = 1) -> int:
    """ECT's stage s: delta until ``first_stage`` steps, then floor((k - (d0 - d1)) / d1) + delta."""
    if step < first_stage:
        return delta
    return (step - (first_stage - stage_length)) // stage_length + delta


def ect_r_of_t(t: torch.Tensor, stage: int, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """ECT's mapping r = max(sigma_min, t (1 - (1 + k sigmoid(-b t)) / q^s)) in unshifted units; r -> t as s grows."""
    return (t * (1 - (1 + k * torch.sigmoid(-b * t)) / q**stage)).clamp(min=sm.SIGMA_MIN)
