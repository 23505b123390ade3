"""Parity with the reference implementation's tensors (tests/data)."""

import torch

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler, EPGPipeline, EPGTransformer2DModel, RCMEncoderModel
from epg_diffusers import sigmas as sm

FORWARD_TOL, SAMPLE_TOL = 1e-5, 1e-4


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def test_network_inputs_match(reference):
    forward = reference["sub"]("tiny32/forward/")
    sigma = forward["sigma"]
    assert max_error(sm.expand_like(sm.c_in(sigma), forward["x_sigma"]) * forward["x_sigma"], forward["net_input"]) == 0
    assert max_error(sm.sigma_to_time(sigma), forward["net_time"]) <= 1e-5 * forward["net_time"].abs().max()


@torch.no_grad()
def test_generator_forwards(reference):
    forward = reference["sub"]("tiny32/forward/")
    for name in ("dm", "cm"):
        model = EPGTransformer2DModel.from_single_file(reference["sub"](f"tiny32/{name}/"), **reference["generator_config"])
        output = model(forward["net_input"], forward["net_time"], forward["y"]).sample
        assert max_error(output, forward[f"{name}_output"]) <= FORWARD_TOL, name
    shift = sm.resolution_shift(32)
    denoised = sm.denoised_from_output(
        forward["cm_output"], forward["x_sigma"], forward["sigma"], "boundary_condition", sm.SIGMA_MIN * shift
    )
    assert max_error(denoised, forward["cm_denoised"]) <= FORWARD_TOL


@torch.no_grad()
def test_encoder_eval_forward(reference):
    forward = reference["sub"]("tiny32/forward/")
    model = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_online/"), **reference["encoder_config"])
    output = model(forward["net_input"], forward["net_time"])
    assert max_error(output.projection, forward["rcm_eval_projection"]) <= FORWARD_TOL
    assert max_error(output.features, forward["rcm_eval_feature"]) <= FORWARD_TOL


def test_karras_grid(reference):
    heun = reference["sub"]("tiny32/heun/")
    assert max_error(sm.karras_sigmas(16) * sm.resolution_shift(32), heun["sigmas_shifted"]) == 0


def test_guided_heun_sample(reference):
    heun, meta = reference["sub"]("tiny32/heun/"), reference["meta"]["heun"]
    model = EPGTransformer2DModel.from_single_file(reference["sub"]("tiny32/dm/"), **reference["generator_config"])
    pipe = EPGPipeline(model, EPGHeunScheduler(image_size=32), id2label={i: f"class {i}" for i in range(10)})
    out = pipe(
        class_labels=heun["y"], num_inference_steps=meta["steps"], guidance_scale=meta["guidance_scale"],
        guidance_interval=tuple(meta["interval_unshifted"]), latents=heun["noise"], output_type="latent",
    )
    assert out.num_network_evaluations == meta["network_evaluations_per_image"] == 36
    assert max_error(out.images, heun["sample"]) <= SAMPLE_TOL


def test_one_step_consistency_sample(reference):
    heun = reference["sub"]("tiny32/heun/")
    model = EPGTransformer2DModel.from_single_file(reference["sub"]("tiny32/cm/"), **reference["generator_config"])
    pipe = EPGPipeline(model, EPGConsistencyScheduler(image_size=32))
    out = pipe(class_labels=heun["y"], latents=heun["noise"], output_type="latent")
    assert out.num_network_evaluations == 1
    assert max_error(out.images, reference["tensors"]["tiny32/onestep/sample"]) <= SAMPLE_TOL
