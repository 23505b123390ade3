"""The reference's other samplers, reproduced through EPGPipeline with ``latents=`` and a seeded ``generator``."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from epg_diffusers import (
    EPGConsistencyScheduler,
    EPGDPMSolverMultistepScheduler,
    EPGEDMSDEScheduler,
    EPGEulerAncestralScheduler,
    EPGEulerScheduler,
    EPGEulerSDEScheduler,
    EPGHeunScheduler,
    EPGPipeline,
    EPGTransformer2DModel,
    EPGUniPCMultistepScheduler,
)
from epg_diffusers import sigmas as sm
from epg_diffusers.defaults import default_pipeline
from epg_diffusers.schedulers import SAMPLERS, scheduler_for

from .conftest import tiny_pipeline

DATA = Path(__file__).parent / "data"
SAMPLE_TOL = 1e-4
SCHEDULERS = {"euler": EPGEulerScheduler, "euler_ancestral": EPGEulerAncestralScheduler, "euler_sde": EPGEulerSDEScheduler,
              "edm_sde": EPGEDMSDEScheduler, "heun": EPGHeunScheduler}
CASES = json.loads((DATA / "epg_reference_samplers_tiny.json").read_text())["tiny32"]["cases"]


@pytest.fixture(scope="module")
def fixtures(reference):
    tensors = load_file(DATA / "epg_reference_samplers_tiny.safetensors")
    config = reference["generator_config"]

    def generator(prefix, source):
        return EPGTransformer2DModel.from_single_file(
            {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}, **config)

    return dict(tensors=tensors, dm=generator("tiny32/dm/", reference["tensors"]), poor=generator("tiny32/poor/", tensors))


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_sampler(fixtures, case):
    spec, tensors = CASES[case], fixtures["tensors"]
    extra = spec["extra"]
    churn = dict(s_churn=extra["S_churn"], s_tmin=extra["S_min"] / 0.5, s_tmax=extra["S_max"] / 0.5,
                 s_noise=extra["S_noise"]) if extra else {}
    scheduler = SCHEDULERS[spec["reference_sampler"]](image_size=32, **churn)
    pipe = EPGPipeline(fixtures["dm"], scheduler, id2label={i: str(i) for i in range(10)})
    kwargs = dict(guidance_scale=spec["scale"], guidance_interval=(0.19, 1.61)) if spec["guidance"] == "cfg" else dict(
        autoguidance_scale=spec["scale"], guidance_transformer=fixtures["poor"])
    generator = torch.Generator().manual_seed(spec["noise_seed"]) if spec["noise_seed"] is not None else None
    out = pipe(class_labels=tensors["tiny32/samplers/y"], num_inference_steps=spec["points"], generator=generator,
               latents=tensors["tiny32/samplers/noise"], output_type="latent", **kwargs)
    assert out.num_network_evaluations == spec["network_evaluations_per_image"]
    # 1e-4 relative to the sample's scale: the autoguided tiny trajectory ends at |x| = 16 and amplifies rounding
    # (the same formula in float64 lands 9e-4 from the reference); the other cases end within |x| <= 5.1
    expected = tensors[f"tiny32/samplers/{case}/sample"]
    assert (out.images - expected).abs().max() <= SAMPLE_TOL * max(1.0, expected.abs().max().item())


ALL = [EPGHeunScheduler, EPGEDMSDEScheduler, EPGEulerScheduler, EPGEulerAncestralScheduler, EPGEulerSDEScheduler,
       EPGDPMSolverMultistepScheduler, EPGUniPCMultistepScheduler]


def drive(scheduler, x0_of, sample, generator=None):
    """Run a scheduler as the pipeline does, with a model whose x0 estimate is ``x0_of(sample, sigma)``; it starts
    at its begin index, or at the timestep its step index already points to."""
    start = scheduler.step_index if scheduler.step_index is not None else scheduler.begin_index or 0
    for t in scheduler.timesteps[start:]:
        sample = scheduler.churn(sample, t, generator)
        scheduler.scale_model_input(sample, t)
        sigma = scheduler.sigmas[scheduler.step_index]
        sample = scheduler.step(x0_of(sample, sigma), t, sample, generator=generator).prev_sample
    return sample


@pytest.mark.parametrize("cls", [EPGDPMSolverMultistepScheduler, EPGUniPCMultistepScheduler, EPGEulerScheduler])
def test_deterministic_solvers_are_exact_for_a_constant_denoiser(cls):
    """D(x, sigma) = c makes the probability-flow ODE linear in sigma: x(sigma) = c + (x_T - c) sigma / sigma_max."""
    scheduler = cls(image_size=64, clip_sample=False, final_sigmas_type="zero")
    scheduler.set_timesteps(12)
    c = torch.full((2, 3, 4, 4), 0.3)
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    assert torch.allclose(drive(scheduler, lambda x, s: c, x_t), c, atol=1e-5)


def test_multistep_solvers_get_the_epg_grid_and_beat_euler_on_the_shipped_model():
    for cls in (EPGDPMSolverMultistepScheduler, EPGUniPCMultistepScheduler):
        scheduler = cls(image_size=32)
        scheduler.set_timesteps(10)
        grid = sm.karras_sigmas(10) * 0.5
        assert torch.equal(scheduler.sigmas[:-1], grid) and torch.equal(scheduler._inner.sigmas, scheduler.sigmas)
        assert torch.allclose(scheduler.timesteps, 250 * torch.log(grid))
    pipe = EPGPipeline.from_pretrained(default_pipeline())  # a trained model: a smooth probability-flow ODE
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=list(range(10)), output_type="pt")
    heun = pipe(generator=seeded(10), **kwargs).images  # its default: 32 guided Heun points, 74 evaluations
    error = {}
    for cls in (EPGEulerScheduler, EPGDPMSolverMultistepScheduler, EPGUniPCMultistepScheduler):
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        out = pipe(num_inference_steps=16, generator=seeded(10), **kwargs)
        assert out.num_network_evaluations == pipe.scheduler.network_evaluations(3.0, (0.19, 1.61)) <= 20
        error[cls] = (out.images - heun).abs().mean().item()
    assert error[EPGDPMSolverMultistepScheduler] < error[EPGEulerScheduler] > error[EPGUniPCMultistepScheduler], error


def seeded(n, start=0):
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


@pytest.mark.parametrize("cls, extra", [(EPGEulerAncestralScheduler, {}), (EPGEulerSDEScheduler, {}),
                                        (EPGEDMSDEScheduler, {"s_churn": 5.0}), (EPGHeunScheduler, {"s_churn": 5.0}),
                                        (EPGDPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"})])
def test_stochastic_samplers_draw_per_image_from_a_generator_list(cls, extra):
    pipe = tiny_pipeline()
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    kwargs = dict(num_inference_steps=5, output_type="pt")
    batch = pipe(class_labels=[1, 2, 3], generator=seeded(3), **kwargs).images
    single = pipe(class_labels=2, generator=seeded(1, start=1), **kwargs).images
    torch.testing.assert_close(single[0], batch[1], atol=1e-3, rtol=0)  # its own noise stream, whatever the batch
    again = pipe(class_labels=[1, 2, 3], generator=seeded(3), **kwargs).images
    other = pipe(class_labels=[1, 2, 3], generator=seeded(3, start=7), **kwargs).images
    assert torch.equal(again, batch) and not torch.allclose(other, batch)


@pytest.mark.parametrize("cls", ALL)
def test_step_starts_from_the_timestep_it_is_given(cls):
    """Without set_begin_index, the first step locates its timestep (a Heun point listed twice: its second entry)."""
    a, b = cls(image_size=32, clip_sample=False), cls(image_size=32, clip_sample=False)
    for scheduler in (a, b):
        scheduler.set_timesteps(6)
    start = a.interval_starts[2]
    b.set_begin_index(start)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * float(a.sigmas[start])
    a.scale_model_input(x, a.timesteps[start])
    assert a.step_index == start

    def x0_of(sample, sigma):
        return 0.5 * sample / (1 + sigma)

    torch.testing.assert_close(drive(a, x0_of, x, torch.Generator().manual_seed(1)),
                               drive(b, x0_of, x, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("cls", ALL + [EPGConsistencyScheduler])
def test_every_scheduler_swaps_adds_noise_and_round_trips(cls, tmp_path):
    scheduler = cls.from_config(EPGHeunScheduler(image_size=64, clip_sample=False).config)
    assert scheduler.config.image_size == 64 and cls.__name__ in scheduler._compatibles
    scheduler.set_timesteps(4)
    x0, noise = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    t = scheduler.timesteps[[0, -1]]
    noisy = scheduler.add_noise(x0, noise, t)
    assert torch.allclose(noisy[:, 0, 0, 0], scheduler.sigmas[[0, len(scheduler.timesteps) - 1]])  # x0 + sigma noise
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    loaded.set_timesteps(4)
    assert torch.equal(loaded.sigmas, scheduler.sigmas)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_saves_and_loads_with_the_pipeline(name, tmp_path):
    pipe = tiny_pipeline()
    pipe.scheduler = scheduler_for(name, pipe.scheduler.config)
    pipe.save_pretrained(tmp_path)
    loaded = EPGPipeline.from_pretrained(tmp_path)
    public = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    assert type(loaded.scheduler) is type(pipe.scheduler)
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == public
