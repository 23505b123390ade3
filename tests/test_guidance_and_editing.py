"""Autoguidance (a weaker model, saved with the pipeline or given per call) and image-to-image (SDEdit)."""

import numpy as np
import PIL.Image
import pytest
import torch

from epg_diffusers import EPGEulerScheduler, EPGPipeline
from epg_diffusers import sigmas as sm

from .conftest import tiny_pipeline, tiny_transformer


def seeded(n, start=0):
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


def test_autoguidance_is_the_reference_formula_and_counts_both_networks(monkeypatch):
    pipe, weak = tiny_pipeline(), tiny_transformer(seed=1)
    seen = []
    real = pipe.network

    def spy(model_input, t, labels, null_labels, guided, guide, scale):
        out, cost = real(model_input, t, labels, null_labels, guided, guide, scale)
        cond = pipe.transformer(model_input, t.expand(len(labels)), labels).sample
        poor = weak(model_input, t.expand(len(labels)), labels).sample
        seen.append(torch.allclose(out, cond + scale * (cond - poor)) and cost == 2 and not guided)
        return out, cost

    monkeypatch.setattr(pipe, "network", spy)
    out = pipe(class_labels=[1, 2], num_inference_steps=4, autoguidance_scale=1.5, guidance_transformer=weak)
    assert out.num_network_evaluations == 2 * 6 and all(seen) and len(seen) == 6  # Heun: 6 evaluations, x2 networks


def test_guidance_transformer_is_saved_and_loaded_with_the_pipeline(tmp_path):
    pipe = EPGPipeline(tiny_transformer(), tiny_pipeline().scheduler, tiny_transformer(seed=1),
                       id2label=tiny_pipeline().config.id2label, default_autoguidance_scale=2.0)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "guidance_transformer" / "transformer_epg.py").is_file()  # diffusers alone loads it too
    loaded = EPGPipeline.from_pretrained(tmp_path)
    assert loaded.guidance_transformer is not None and loaded.config.default_autoguidance_scale == 2.0
    kwargs = dict(class_labels=[3], num_inference_steps=3, output_type="pt")
    a, b = pipe(generator=seeded(1), **kwargs), loaded(generator=seeded(1), **kwargs)
    assert a.num_network_evaluations == 8 and torch.equal(a.images, b.images)  # the default: autoguidance, w = 2
    off = loaded(generator=seeded(1), autoguidance_scale=0, **kwargs)
    assert off.num_network_evaluations == 4 and not torch.allclose(off.images, a.images)
    plain = tiny_pipeline()  # a pipeline saved without one loads with none
    plain.save_pretrained(tmp_path / "plain")
    assert EPGPipeline.from_pretrained(tmp_path / "plain").guidance_transformer is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(autoguidance_scale=1.0), "`autoguidance_scale` needs a weaker model"),
    (dict(autoguidance_scale=1.0, guidance_transformer="weak", guidance_scale=2.0), "are exclusive"),
    (dict(autoguidance_scale=-1.0, guidance_transformer="weak"), "`autoguidance_scale` must be a finite number >= 0"),
    (dict(autoguidance_scale=1.0, guidance_transformer="other-size"), "`guidance_transformer` must match"),
])
def test_autoguidance_bad_input(kwargs, message):
    models = {"weak": tiny_transformer(seed=1), "other-size": tiny_transformer(seed=1, sample_size=32)}
    if "guidance_transformer" in kwargs:
        kwargs["guidance_transformer"] = models[kwargs["guidance_transformer"]]
    with pytest.raises(ValueError, match=message):
        tiny_pipeline()(class_labels=1, num_inference_steps=2, **kwargs)


def images(pipe, n=2):
    return pipe(class_labels=list(range(n)), num_inference_steps=4, generator=seeded(n), output_type="pt").images


@pytest.mark.parametrize("consistency", [False, True])
def test_strength_one_starts_from_the_image_plus_the_first_sigma(consistency, monkeypatch):
    pipe = tiny_pipeline(consistency=consistency)
    image = images(tiny_pipeline())
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    first = []
    real = pipe.scheduler.scale_model_input
    monkeypatch.setattr(pipe.scheduler, "scale_model_input", lambda x, t: first.append(x.clone()) or real(x, t))
    out = pipe(class_labels=[0, 1], image=image, strength=1.0, latents=eps, output_type="pt")
    mean, std = torch.tensor(pipe.config.image_mean).view(1, 3, 1, 1), torch.tensor(pipe.config.image_std).view(1, 3, 1, 1)
    full = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    full.set_timesteps(pipe.config.default_num_inference_steps or full.default_num_inference_steps)
    assert pipe.scheduler.init_noise_sigma == full.init_noise_sigma  # the full schedule's first sigma
    torch.testing.assert_close(first[0], (image - mean) / std + full.init_noise_sigma * eps)
    assert out.num_network_evaluations == full.network_evaluations()


@pytest.mark.parametrize("consistency", [False, True])
def test_strength_near_zero_returns_the_image(consistency):
    pipe = tiny_pipeline(consistency=consistency)
    image = images(tiny_pipeline())
    for strength in (0.0, 0.01):
        out = pipe(class_labels=[0, 1], image=image, strength=strength, num_inference_steps=8, output_type="pt",
                   generator=seeded(2))
        if strength == 0.0 or not consistency:  # 0.01 of 7 Heun intervals is none: the image itself
            assert out.num_network_evaluations == 0
            torch.testing.assert_close(out.images, image, atol=1e-6, rtol=0)


def test_partial_strength_runs_the_schedule_tail():
    pipe = tiny_pipeline()
    image = images(tiny_pipeline())
    pipe.scheduler = EPGEulerScheduler.from_config(pipe.scheduler.config)
    out = pipe(class_labels=[0, 1], image=image, strength=0.5, num_inference_steps=9, generator=seeded(2))
    assert out.num_network_evaluations == 4  # 8 intervals, the last 4
    consistency = tiny_pipeline(consistency=True)
    out = consistency(class_labels=[0, 1], image=image, strength=0.5, generator=seeded(2), output_type="pt")
    start = float(sm.karras_sigmas_at(torch.tensor(0.5), 2)) * 0.25
    assert out.num_network_evaluations == 1 and consistency.scheduler.sigmas[0] == pytest.approx(start)


def test_image_to_image_accepts_pil_and_arrays_and_refuses_bad_images():
    pipe = tiny_pipeline()
    pil = PIL.Image.fromarray(np.full((16, 16, 3), 128, np.uint8))
    for image in (pil, [pil, pil], np.full((16, 16, 3), 128, np.uint8), torch.full((1, 3, 16, 16), 0.5)):
        assert len(pipe(class_labels=[1, 2], image=image, strength=0.3, num_inference_steps=4).images) == 2
    with pytest.raises(ValueError, match=r"`image` must be 16 x 16 pixels with 3 channels .* got \(3, 32, 32\)"):
        pipe(class_labels=1, image=pil.resize((32, 32)))
    with pytest.raises(ValueError, match=r"`image` must be an RGB image, got mode 'L' \(use image.convert\('RGB'\)\)"):
        pipe(class_labels=1, image=pil.convert("L"))
    with pytest.raises(ValueError, match=r"`image` has 3 images for a batch of 2"):
        pipe(class_labels=[1, 2], image=[pil] * 3)
    for strength in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="`strength` must be a number in \\[0, 1\\]"):
            pipe(class_labels=1, image=pil, strength=strength)
    with pytest.raises(ValueError, match="values must lie in \\[0, 1\\]"):
        pipe(class_labels=1, image=torch.full((1, 3, 16, 16), 2.0))
