"""EPGHeunScheduler and EPGConsistencyScheduler: schedules, known answers, round trips, bad input."""

import pytest
import torch

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler
from epg_diffusers import sigmas as sm


def run(scheduler, x0_of, sample, **step_kwargs):
    """Drive a scheduler with a model whose output is given by ``x0_of(sample, sigma)``."""
    for i, t in enumerate(scheduler.timesteps):
        sigma = sm.time_to_sigma(t)
        scaled = scheduler.scale_model_input(sample, t)
        assert torch.allclose(scaled, sample * sm.c_in(scheduler.sigmas[i]))
        assert torch.allclose(sigma, scheduler.sigmas[i], rtol=1e-5)
        sample = scheduler.step(x0_of(sample, sigma), t, sample, **step_kwargs).prev_sample
    return sample


@pytest.mark.parametrize("final, evaluations", [("sigma_min", 2 * (16 - 1)), ("zero", 2 * 16 - 1)])
def test_heun_schedule_layout(final, evaluations):
    scheduler = EPGHeunScheduler(image_size=32, final_sigmas_type=final)
    scheduler.set_timesteps(16)
    grid = sm.karras_sigmas(16) * 0.5
    assert len(scheduler.timesteps) == evaluations
    assert len(scheduler.sigmas) == evaluations + 1
    assert torch.equal(scheduler.sigmas[:3], torch.stack([grid[0], grid[1], grid[1]]))
    assert scheduler.init_noise_sigma == pytest.approx(80 * 0.5)
    assert torch.allclose(scheduler.timesteps, 250 * torch.log(scheduler.sigmas[:-1]))
    assert scheduler.sigmas[-1] == (grid[-1] if final == "sigma_min" else 0)


@pytest.mark.parametrize("final", ["sigma_min", "zero"])
def test_heun_solves_constant_denoiser_exactly(final):
    # D(x, sigma) = c makes the probability-flow ODE dx/dsigma = (x - c)/sigma linear in sigma,
    # so every Heun step is exact: x(sigma_end) = c + (x_T - c) sigma_end / sigma_max.
    scheduler = EPGHeunScheduler(image_size=256, final_sigmas_type=final, clip_sample=False)
    scheduler.set_timesteps(8)
    c = torch.full((2, 3, 4, 4), 0.3)
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    result = run(scheduler, lambda x, s: c, x_t)
    expected = c + (x_t - c) * scheduler.sigmas[-1] / scheduler.sigmas[0]
    assert torch.allclose(result, expected, atol=1e-5)


def test_heun_clamps_x0_in_faithful_mode():
    scheduler = EPGHeunScheduler(image_size=64)
    scheduler.set_timesteps(4)
    sample = torch.zeros(1, 3, 2, 2)
    out = scheduler.step(torch.full_like(sample, 5.0), scheduler.timesteps[0], sample)
    assert out.pred_original_sample.max() == 1.0
    unclamped = EPGHeunScheduler(image_size=64, clip_sample=False)
    unclamped.set_timesteps(4)
    assert unclamped.step(torch.full_like(sample, 5.0), unclamped.timesteps[0], sample).pred_original_sample.max() == 5.0


def test_boundary_condition_is_identity_at_sigma_min():
    x = torch.randn(2, 3, 4, 4)
    sigma = torch.tensor(sm.SIGMA_MIN * 4)
    assert torch.allclose(sm.denoised_from_output(torch.randn_like(x), x, sigma, "boundary_condition", sigma.item()), x)


def test_consistency_one_step_and_few_step():
    scheduler = EPGConsistencyScheduler(image_size=256)
    scheduler.set_timesteps(1)
    assert scheduler.sigmas.tolist() == pytest.approx([320.0, 0.008])
    scheduler.set_timesteps(3)
    assert len(scheduler.timesteps) == 3
    assert torch.allclose(scheduler.sigmas[:3], sm.karras_sigmas(4)[:3] * 4)
    scheduler.set_timesteps(sigmas=[80.0, 0.8])
    assert scheduler.sigmas.tolist() == pytest.approx([320.0, 3.2, 0.008])
    # few-step: re-noise x0 to the next sigma with sqrt(sigma^2 - sigma_min^2) z
    x0 = torch.full((2, 3, 4, 4), 0.25)
    sample = torch.randn(2, 3, 4, 4) * 320
    gen = torch.Generator().manual_seed(0)
    step = scheduler.step(torch.zeros_like(x0), scheduler.timesteps[0], sample, generator=gen)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x0_expected = sm.denoised_from_output(torch.zeros_like(x0), sample, torch.tensor(320.0), "boundary_condition", 0.008)
    assert torch.allclose(step.prev_sample, x0_expected.clamp(-1, 1) + (3.2**2 - 0.008**2) ** 0.5 * noise, atol=1e-5)


@pytest.mark.parametrize("cls", [EPGHeunScheduler, EPGConsistencyScheduler])
def test_scheduler_round_trip_and_swap(cls, tmp_path):
    scheduler = cls(image_size=512, prediction_type="boundary_condition", clip_sample=False)
    scheduler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = cls.from_pretrained(tmp_path)
    scheduler.set_timesteps(4)
    loaded.set_timesteps(4)
    assert torch.equal(scheduler.timesteps, loaded.timesteps) and torch.equal(scheduler.sigmas, loaded.sigmas)
    other = {EPGHeunScheduler: EPGConsistencyScheduler, EPGConsistencyScheduler: EPGHeunScheduler}[cls]
    swapped = other.from_config(scheduler.config)
    assert swapped.config.image_size == 512 and swapped.config.prediction_type == "boundary_condition"


def test_scheduler_outputs_tuple_and_dict_agree():
    a, b = EPGHeunScheduler(image_size=64), EPGHeunScheduler(image_size=64)
    for s in (a, b):
        s.set_timesteps(3)
    x, out = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    tuple_out = a.step(out, a.timesteps[0], x, return_dict=False)
    dict_out = b.step(out, b.timesteps[0], x)
    assert torch.equal(tuple_out[0], dict_out.prev_sample) and torch.equal(tuple_out[1], dict_out.pred_original_sample)


@pytest.mark.parametrize(
    "make, call, message",
    [
        (lambda: EPGHeunScheduler(), lambda s: s.set_timesteps(0), "`num_inference_steps` must be an integer >= 1"),
        (lambda: EPGHeunScheduler(), lambda s: s.set_timesteps(1), "must be >= 2 with final_sigmas_type='sigma_min'"),
        (lambda: EPGHeunScheduler(), lambda s: s.set_timesteps(sigmas=[1.0, 2.0]), "strictly decreasing"),
        (lambda: EPGHeunScheduler(), lambda s: s.set_timesteps(4, sigmas=[2.0, 1.0]), "exactly one of"),
        (lambda: EPGConsistencyScheduler(), lambda s: s.set_timesteps(sigmas=[80.0, 0.001]), "must exceed `sigma_min`"),
        (lambda: EPGHeunScheduler(final_sigmas_type="none"), None, "`final_sigmas_type` must be"),
        (lambda: EPGHeunScheduler(prediction_type="epsilon"), None, "`prediction_type` must be one of"),
        (lambda: EPGConsistencyScheduler(image_size=0), None, "`image_size` must be positive"),
        (lambda: EPGHeunScheduler(), lambda s: s.scale_model_input(torch.zeros(1)), "call `set_timesteps`"),
    ],
)
def test_scheduler_bad_input(make, call, message):
    with pytest.raises(ValueError, match=message):
        scheduler = make()
        call(scheduler)


def test_sample_boundary_condition_scalings():
    """x-prediction under the consistency boundary condition: D(x, sigma_min) = x, D = F within 1% from 11 sigma_min."""
    sigma_min = 0.002 * 0.25
    c_skip, c_out = sm.sample_boundary_scalings(torch.tensor([sigma_min, 11 * sigma_min, 20.0]), sigma_min)
    assert torch.allclose(c_skip + c_out, torch.ones(3)) and c_skip[0] == 1 and c_out[1] > 0.99 and c_out[2] > 0.999999
    x, f = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    d = sm.denoised_from_output(f, x, torch.tensor([sigma_min, 20.0]), "sample_boundary_condition", sigma_min)
    assert torch.equal(d[0], x[0]) and torch.allclose(d[1], f[1], atol=1e-5)
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        sm.denoised_from_output(f, x, torch.tensor([1.0, 1.0]), "epsilon", sigma_min)
