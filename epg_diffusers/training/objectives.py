"""Training objectives, one screen each, with the paper's names and equations, in one convention (as EDM's losses):
shifted sigmas in (drawn, with their loss weights, by the noise-level classes here), a dict of per-sample terms out:
``loss`` (what is optimised, averaged over the batch by the scripts) and ``<term>_loss`` or named diagnostics.

Every network input is ``sigmas.network_inputs``: c_in(sigma) x_sigma with time input 250 ln sigma.
"""

import torch
import torch.nn.functional as F

from .. import sigmas as sm
from ..sigmas import network_inputs  # noqa: F401  (re-exported: the objectives' input convention)
from .curricula import ect_r_of_t, lognormal_sigmas, snap_to_karras_grid


def nt_xent(
    prediction: torch.Tensor, targets: torch.Tensor, tau: float | torch.Tensor, offset: int = 0
) -> torch.Tensor:
    """Per-sample NT-Xent (InfoNCE with cosine similarity), Eq. (2) of the paper.

    ``prediction`` (B, D) are this process's rows, ``targets`` (B_global, D) the targets of the whole global
    batch (every other image is a negative); row i's positive is ``targets[offset + i]``. ``tau`` is a scalar
    or one temperature per row. loss_i = logsumexp_j(s_ij / tau_i) - s_ii / tau_i.
    """
    logits = F.normalize(prediction.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).T  # B x B_global
    tau = torch.as_tensor(tau, dtype=logits.dtype, device=logits.device).reshape(-1, 1)  # (1,1) or (B,1)
    logits = logits / tau
    positives = torch.arange(len(prediction), device=logits.device) + offset
    return torch.logsumexp(logits, dim=1) - logits.gather(1, positives[:, None]).squeeze(1)


def rcm_pretrain_loss(
    online, target, x0, view1, view2, noise, sigmas, gather=lambda t: t, offset=0, consistency_tau=0.1,
    contrastive_tau=0.2,
) -> dict[str, torch.Tensor]:
    """RCM pre-training loss per sample (paper Eq. 3; reference notes section 4).

    ``sigmas`` = (t_0, t_n, t_{n+1}) shifted, with t_0 = sigma_min H/64 and t_n > t_{n+1}; one ``noise``
    eps per image is shared by all four noisy inputs. ``online`` and ``target`` (momentum encoder) return
    (projection, normed CLS feature). ``gather`` collects a tensor from all processes (targets only), and
    ``offset`` is this process's first row in the global batch. ``contrastive_tau`` is the temperature of the
    contrastive term (the paper's 0.2), ``consistency_tau`` that of the consistency term.
    """
    t0, tn, tn1 = sigmas
    # Contrastive term: two augmented views at t_0, online projections vs momentum projections, symmetric.
    p1 = online(*network_inputs(view1 + noise * t0, t0), return_dict=False)[0]
    p2 = online(*network_inputs(view2 + noise * t0, t0), return_dict=False)[0]
    with torch.no_grad():
        z1 = target(*network_inputs(view1 + noise * t0, t0), return_dict=False)[0]
        z2 = target(*network_inputs(view2 + noise * t0, t0), return_dict=False)[0]
    contrastive = nt_xent(p1, gather(z2), contrastive_tau, offset) + nt_xent(p2, gather(z1), contrastive_tau, offset)
    # Representation consistency: normed CLS at t_n vs stop-gradient online CLS at t_{n+1} (same eps).
    h_n = online(*network_inputs(x0 + noise * tn, tn), return_dict=False)[1]
    with torch.no_grad():
        h_n1 = online(*network_inputs(x0 + noise * tn1, tn1), return_dict=False)[1]
    consistency = nt_xent(h_n, gather(h_n1), consistency_tau, offset)
    return {"loss": contrastive + consistency, "contrastive_loss": contrastive, "consistency_loss": consistency}


@torch.no_grad()
def collapse_diagnostic(encoder, x0: torch.Tensor, shift: float, sigmas=(0.002, 0.1, 1.0, 10.0, 80.0)) -> dict:
    """Paper Appendix E: mean per-channel std of L2-normalised features at several (unshifted) sigmas.

    About 1/sqrt(D) for healthy, spread-out features; near 0 when every image maps to the same feature.
    The inputs are noised with a fixed seed so the value is comparable across steps. The encoder runs in eval mode
    (no dropout; its projector's BatchNorm running statistics, which training uses, are left as they were).
    """
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(x0)
    result = {}
    was_training = encoder.training
    encoder.eval()
    try:
        for sigma in sigmas:
            sigma_shifted = torch.tensor(sigma * shift, device=x0.device)
            features = encoder(*network_inputs(x0 + noise * sigma_shifted, sigma_shifted), return_dict=False)[1]
            result[sigma] = F.normalize(features.float(), dim=-1).std(dim=0).mean().item()
    finally:
        encoder.train(was_training)
    return result


LOSS_WEIGHTINGS = ("reference", "uniform")


def check_loss_weighting(loss_weighting: str) -> None:
    """Refuse an unknown ``loss_weighting`` before any network runs."""
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"`loss_weighting` must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}.")


class DiffusionNoiseLevels:
    """Where diffusion fine-tuning trains (reference notes section 5): the noise proposal and its loss weight.

    EDM's proposal sigma = exp(P_mean + P_std n) (unshifted; the paper: -1.2, 1.6) is snapped to the nearest point
    sigma_i of a ``grid_size``-point Karras grid, then shifted by H/64. ``loss_weighting`` w(sigma_i):

    * ``"reference"`` (the paper): 1 / (sigma_i - sigma_{i+1}) on the unshifted grid (sigma_N continues the
      formula), about 2.6e4 at sigma_min and 3 at sigma_max, so low noise levels dominate the gradient;
    * ``"uniform"``: 1, the plain x0 MSE. Not the paper's recipe: for tiny models and budgets (the digits
      defaults), where the reference weighting leaves the high noise levels that decide the class untrained
      (TRAINING.md, "Digits defaults").
    """

    def __init__(self, p_mean: float, p_std: float, shift: float, grid_size: int = 1280,
                 loss_weighting: str = "reference"):
        check_loss_weighting(loss_weighting)
        self.p_mean, self.p_std, self.shift, self.grid_size = p_mean, p_std, shift, grid_size
        self.loss_weighting = loss_weighting

    def sample(self, batch: int, generator=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(shifted sigma, weight) per sample, drawn from the proposal with ``generator``."""
        return self.at(lognormal_sigmas(batch, self.p_mean, self.p_std, generator, device))

    def at(self, sigma_proposal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shifted sigma, weight) per sample for given unshifted proposal sigmas."""
        index = snap_to_karras_grid(sigma_proposal, self.grid_size)
        sigma = sm.karras_sigmas(self.grid_size).to(sigma_proposal.device)[index]
        if self.loss_weighting == "reference":
            weight = 1.0 / (sigma - sm.karras_sigmas_at(index + 1, self.grid_size))
        else:
            weight = torch.ones_like(sigma)
        return sigma * self.shift, weight


class ConsistencyNoiseLevels:
    """Where consistency fine-tuning trains (ECT; reference notes section 6): the pairs t > r and their weight.

    t ~ exp(P_mean + P_std n) clamped at sigma_min (unshifted), r = ECT's mapping of t at the current stage, both
    shifted by H/64. ``loss_weighting``: ``"reference"`` (the paper) 1 / (t - r) on shifted values, ``"uniform"``
    1 (not the paper's recipe; the digits defaults, where 1 / (t - r) leaves the high noise levels of one-step
    sampling untrained); 0 where t = r.
    """

    def __init__(self, p_mean: float, p_std: float, shift: float, ect_q: float = 2.0, ect_k: float = 8.0,
                 ect_b: float = 1.0, loss_weighting: str = "reference"):
        check_loss_weighting(loss_weighting)
        self.p_mean, self.p_std, self.shift = p_mean, p_std, shift
        self.ect_q, self.ect_k, self.ect_b, self.loss_weighting = ect_q, ect_k, ect_b, loss_weighting

    def sample(self, batch: int, stage: int, generator=None, device=None):
        """(shifted t, shifted r, weight) per sample at ECT stage ``stage``, drawn with ``generator``."""
        t = lognormal_sigmas(batch, self.p_mean, self.p_std, generator, device).clamp(min=sm.SIGMA_MIN)
        return self.pairs(t, ect_r_of_t(t, stage, self.ect_q, self.ect_k, self.ect_b))

    def pairs(self, t: torch.Tensor, r: torch.Tensor):
        """(shifted t, shifted r, weight) for given unshifted t >= r."""
        t_s, r_s = t * self.shift, r * self.shift
        per_pair = 1.0 / (t_s - r_s).clamp(min=1e-12) if self.loss_weighting == "reference" else torch.ones_like(t_s)
        return t_s, r_s, torch.where(t_s > r_s, per_pair, torch.zeros_like(t_s))


def diffusion_loss(model, x0, class_labels, noise, sigma, weight) -> dict[str, torch.Tensor]:
    """Per-sample x-prediction loss of diffusion fine-tuning (reference notes section 5).

    ``sigma`` (shifted) and ``weight`` from :class:`DiffusionNoiseLevels`: x_sigma = x0 + eps sigma, the network
    predicts x0 (D = F), and the loss is the mean over pixels of w (D - x0)^2. Terms: ``loss``, ``x0_mse`` (the
    unweighted mean squared error, logged).
    """
    x0_hat = model(*network_inputs(x0 + noise * sm.expand_like(sigma, x0), sigma), class_labels, return_dict=False)[0]
    squared = (x0_hat.float() - x0) ** 2
    return {"loss": (squared * sm.expand_like(weight, x0)).flatten(1).mean(1),
            "x0_mse": squared.detach().flatten(1).mean(1)}


def consistency_denoise(model, x_sigma, sigma, class_labels, sigma_min: float,
                        prediction_type: str = "boundary_condition") -> torch.Tensor:
    """D(x, sigma) = c_skip x + c_out F with the shifted ``sigma_min`` (boundary condition, D(x, sigma_min) = x); the
    paper's c_skip / c_out, or ``"sample_boundary_condition"``'s (x-prediction, ``sigmas.sample_boundary_scalings``)."""
    output = model(*network_inputs(x_sigma, sigma), class_labels, return_dict=False)[0]
    return sm.denoised_from_output(output.float(), x_sigma, sigma, prediction_type, sigma_min)


def consistency_loss(model, target, perceptual, x0, class_labels, noise, t, r, weight, sigma_min: float,
                     huber_c: float = 0.06, aux_tau: float = 0.1, aux_weight: float = 1.0, gather=lambda v: v,
                     offset: int = 0, prediction_type: str = "boundary_condition") -> dict[str, torch.Tensor]:
    """Per-sample consistency fine-tuning loss (reference notes section 6; ECT with a perceptual NT-Xent).

    ``t`` > ``r`` (shifted) and ``weight`` from :class:`ConsistencyNoiseLevels`; both inputs share ``noise``;
    ``sigma_min`` is the shifted sigma_min (0.002 H/64). ``target`` is a stop-gradient copy of ``model`` run with the
    same dropout masks. Distance l = sum over pixels of (D - D^-)^2, used as l / sqrt(l + c^2) (c not scaled with
    dimension), times ``weight``. ``prediction_type``: how D is made from the network output
    (:func:`consistency_denoise`). ``perceptual`` (a frozen pre-trained encoder in eval mode) embeds D(x_t) and x0
    at sigma_min without noise; NT-Xent rows are the prediction's projector features, columns the clean images'
    (global batch); ``perceptual=None`` leaves the term out (0). Terms: ``loss``, ``consistency_loss``,
    ``perceptual_loss``.
    """
    devices = [x0.device] if x0.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the target reuses the online pass's dropout masks
        denoised = consistency_denoise(model, x0 + noise * sm.expand_like(t, x0), t, class_labels, sigma_min,
                                       prediction_type)
    with torch.no_grad():
        denoised_target = consistency_denoise(target, x0 + noise * sm.expand_like(r, x0), r, class_labels, sigma_min,
                                               prediction_type)
    squared = ((denoised - denoised_target) ** 2).flatten(1).sum(dim=1)
    distance = squared / (squared.detach() + huber_c**2).sqrt()
    if perceptual is None:  # ECT's loss alone (--aux_weight 0 without a perceptual encoder)
        aux = torch.zeros_like(squared)
    else:
        sigma0 = torch.tensor(sigma_min, device=x0.device)
        prediction = perceptual(*network_inputs(denoised, sigma0), return_dict=False)[0]
        with torch.no_grad():
            clean = perceptual(*network_inputs(x0, sigma0), return_dict=False)[0]
        aux = nt_xent(prediction, gather(clean), aux_tau, offset)
    consistency = weight * distance
    return {"loss": consistency + aux_weight * aux, "consistency_loss": consistency, "perceptual_loss": aux}
