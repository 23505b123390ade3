"""Feature extractors for evaluation and the loop that runs one over an image batch.

A feature extractor is any callable that takes uint8 images (B, 3, H, W) as a torch tensor and returns a dict
of float tensors: ``"pool"`` (B, D) for FID and precision / recall, ``"spatial"`` (B, S) for sFID and
``"logits"`` (B, K) whose softmax feeds the Inception Score. :class:`InceptionV3Features` is the one whose
numbers compare with ADM's evaluator; tests inject small deterministic ones, so nothing is downloaded.
"""

from collections.abc import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

FeatureExtractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]
FEATURES = ("pool", "spatial", "logits")
SPATIAL_CHANNELS = 7  # ADM's sFID: the first 7 channels of mixed_6/conv (17 x 17 x 7 = 2023 features)


class InceptionV3Features:
    """ADM's Inception-v3 features from torch-fidelity's port of the TensorFlow graph ``2015-12-05``.

    - ``pool``: the 2048-d ``pool_3`` features (FID, precision / recall);
    - ``spatial``: ``mixed_6/conv`` (torch-fidelity's ``Mixed_6d.branch1x1`` output), first 7 channels, flattened
      channels-last like TensorFlow's NHWC so that ADM's precomputed ``mu_s`` / ``sigma_s`` line up;
    - ``logits``: the 1008 logits without the final bias, as ADM's softmax uses them (Inception Score).

    Images are resized to 299 px inside the network with TensorFlow-1 bilinear resampling, as in the graph.

    Args:
        weights_path (`str`, *optional*): torch-fidelity's converted weights
            (``weights-inception-2015-12-05-6726825d.pth``); without it they are downloaded once into the torch
            hub cache (``~/.cache/torch/hub/checkpoints``), which needs network access.
        device (`str` or `torch.device`, defaults to ``"cpu"``): where the network runs.
    """

    name = "inception-v3-compat (torch-fidelity port of the TF graph used by ADM's evaluator)"

    def __init__(self, weights_path: str | None = None, device: str | torch.device = "cpu"):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            self.model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights_path
            )
        except Exception as error:  # no network, missing or corrupt file
            raise ValueError(
                f"cannot load the Inception-v3 weights (`inception_weights`={weights_path!r}): {error}. Without "
                "network access, pass the file weights-inception-2015-12-05-6726825d.pth of torch-fidelity's "
                "v0.2.0 release or put it in the torch hub cache (~/.cache/torch/hub/checkpoints)."
            ) from error
        self.device = torch.device(device)
        self.model.to(self.device)
        self._spatial: list[torch.Tensor] = []
        self.model.Mixed_6d.branch1x1.register_forward_hook(lambda module, inputs, output: self._spatial.append(output))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of uint8 images (B, 3, H, W)."""
        self._spatial.clear()
        pool, logits = self.model(images.to(self.device))
        spatial = self._spatial.pop()[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)  # B 17 17 7, NHWC like TF
        return {"pool": pool, "spatial": spatial.reshape(len(images), -1), "logits": logits}


def compute_features(
    batches: Iterable[np.ndarray], extractor: FeatureExtractor, total: int | None = None, desc: str = "features"
) -> dict[str, np.ndarray]:
    """Run ``extractor`` over uint8 (B, H, W, 3) ``batches``: float32 ``pool`` and ``spatial`` features and
    float64 softmax ``probs`` of the logits (the Inception Score input)."""
    from scipy.special import softmax  # the [eval] extra, imported when used

    parts = {key: [] for key in FEATURES}
    with tqdm(total=total, desc=desc, unit="img") as progress:
        for batch in batches:
            out = extractor(torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2))
            missing = [key for key in FEATURES if key not in out]
            if missing:
                raise ValueError(f"the feature extractor returned {sorted(out)}; it must return {list(FEATURES)}.")
            for key in FEATURES:
                parts[key].append(out[key].detach().float().cpu().numpy())
            progress.update(len(batch))
    features = {key: np.concatenate(values) for key, values in parts.items()}
    features["probs"] = softmax(features.pop("logits").astype(np.float64), axis=1)
    return features
