"""The metric math of the ADM evaluator on feature arrays: Fréchet distance (FID, sFID), Inception Score and
k-nearest-neighbour precision / recall (Kynkäänniemi et al. 2019, k = 3).

Everything here takes plain arrays (rows are images), so it is tested with known answers and no network;
the features come from :mod:`epg_diffusers.evaluation.inception` or any injected extractor.
"""

import numpy as np
import torch


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov`` with rows as observations) of ``features``, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"`features` must be a 2-D array with at least 2 rows, got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, computed as ADM's evaluator does.

    The matrix square root is scipy's ``sqrtm``; when it is not finite (a singular product) ``eps`` is added to
    both diagonals, and an imaginary part larger than 1e-3 is an error rather than silently dropped.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape} "
            "(were both sets described by the same feature extractor?)."
        )
    from scipy import linalg  # the [eval] extra, imported when used

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            imaginary = np.abs(covmean.imag).max()
            raise ValueError(f"the covariance product has a large imaginary square root ({imaginary:.3g}).")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """exp(E_x KL(p(y|x) || p(y))), averaged over consecutive splits of ``split_size`` rows (ADM: 5000).

    ``probs`` are class probabilities (rows sum to 1); 0 log 0 counts as 0.
    """
    from scipy.special import rel_entr  # the [eval] extra, imported when used

    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"`probs` must be a non-empty 2-D array, got shape {probs.shape}.")
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start : start + split_size]
        kl = rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1)  # KL(p(y|x) || p(y)) per image
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (|a|^2 - 2 a.b + |b|^2, clamped at 0, as ADM computes them)."""
    return (a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]).clamp_min_(0)  # A B


def manifold_radii(features: np.ndarray, k: int = 3, batch_size: int = 10000) -> np.ndarray:
    """Squared distance from every row to its k-th nearest neighbour in the same set (itself excluded)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    if x.ndim != 2 or len(x) <= k:
        raise ValueError(f"`features` needs more than k={k} rows for k-NN radii, got shape {tuple(x.shape)}.")
    radii = []
    for s in range(0, len(x), batch_size):
        # the k + 1 smallest of each column block (B x B distances in memory, never B x N), then of their union;
        # the point itself is the smallest (distance 0), so the (k + 1)-th is its k-th neighbour
        nearest = []
        for c in range(0, len(x), batch_size):
            dist = _squared_distances(x[s : s + batch_size], x[c : c + batch_size])  # B B'
            nearest.append(dist.topk(min(k + 1, dist.shape[1]), dim=1, largest=False).values)
        radii.append(torch.kthvalue(torch.cat(nearest, dim=1), k + 1, dim=1).values)
    return torch.cat(radii).numpy()


def precision_recall(
    reference: np.ndarray, samples: np.ndarray, k: int = 3, batch_size: int = 10000
) -> tuple[float, float]:
    """Improved precision and recall: the share of samples inside the reference manifold, and of references inside
    the sample manifold, where a manifold is the union of balls reaching each point's k-th nearest neighbour."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    gen = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
    if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1]:
        raise ValueError(
            f"`reference` {tuple(ref.shape)} and `samples` {tuple(gen.shape)} must be 2-D with equal widths."
        )
    ref_radii = torch.from_numpy(manifold_radii(ref, k, batch_size))
    gen_radii = torch.from_numpy(manifold_radii(gen, k, batch_size))
    gen_in_ref = torch.zeros(len(gen), dtype=torch.bool)
    ref_in_gen = torch.zeros(len(ref), dtype=torch.bool)
    for i in range(0, len(ref), batch_size):
        for j in range(0, len(gen), batch_size):
            dist = _squared_distances(ref[i : i + batch_size], gen[j : j + batch_size])  # R G
            gen_in_ref[j : j + batch_size] |= (dist <= ref_radii[i : i + batch_size, None]).any(0)
            ref_in_gen[i : i + batch_size] |= (dist <= gen_radii[None, j : j + batch_size]).any(1)
    return float(gen_in_ref.float().mean()), float(ref_in_gen.float().mean())
