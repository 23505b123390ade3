"""The shipped digits pipelines meet the quality bars stated in their model cards (small-data metrics).

The cards measure 1,000 samples with `epg sample` + `epg evaluate --small-data digits`; here the same bars are
checked on the same seeds (image i seeded with i, class i mod 10): all 1,000 for the one-step model, the first
200 for the diffusion model (74 network evaluations each). An untrained network scores Fréchet distance 267.
"""

import numpy as np
import pytest
import torch

from epg_diffusers import EPGPipeline, defaults
from epg_diffusers.evaluation.small_data import small_data_metrics

UNTRAINED_FRECHET_DISTANCE = 267.0


@pytest.mark.parametrize("name, num_samples, min_accuracy, max_frechet_distance", [
    (defaults.DIFFUSION_PIPELINE, 200, 0.90, UNTRAINED_FRECHET_DISTANCE / 10),
    (defaults.CONSISTENCY_PIPELINE, 1000, 0.90, 5.0),  # measured 97.5% and 4.41 (its card)
])
def test_shipped_pipeline_meets_its_quality_bar(name, num_samples, min_accuracy, max_frechet_distance):
    pipe = EPGPipeline.from_pretrained(defaults.default_pipeline(name))
    pipe.set_progress_bar_config(disable=True)
    labels = np.arange(num_samples) % 10
    generators = [torch.Generator("cpu").manual_seed(i) for i in range(num_samples)]
    images = pipe(class_labels=labels.tolist(), generator=generators, output_type="np").images  # the saved defaults
    metrics = small_data_metrics((np.asarray(images) * 255).round().astype(np.uint8), labels, 16)
    assert metrics["classifier_accuracy"] >= min_accuracy
    assert metrics["frechet_distance"] <= max_frechet_distance
