"""EPGPipeline: labels, guidance, generators, output types, callbacks, round trips and bad input."""

import numpy as np
import PIL.Image
import pytest
import torch

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler, EPGPipeline

from .conftest import TINY_LABELS, tiny_pipeline, tiny_transformer


def seeded(n: int, start: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(start + i) for i in range(n)]


def test_labels_accept_ids_names_lists_and_tensors():
    pipe = tiny_pipeline()
    assert pipe.labels.resolve(3) == [3]
    assert pipe.labels.resolve("goldfish") == [1]  # a single string is one label
    assert pipe.labels.resolve(["Tinca tinca", 2, "TENCH"]) == [0, 2, 0]  # synonyms, case-insensitive
    assert pipe.labels.resolve(torch.tensor([4, 5])) == [4, 5]
    assert pipe.labels.resolve(np.int64(3)) == [3] and pipe.labels.resolve([np.int32(2), "hen"]) == [2, 8]
    assert pipe.labels.resolve(np.array([[1], [2]])) == [1, 2]
    assert pipe.labels.resolve([[1], [2]]) == [1, 2]
    assert pipe.get_label_ids("hen") == [8]


def test_imagenet_names_are_the_default_for_1000_classes():
    pipe = EPGPipeline(tiny_transformer(num_classes=1000), EPGHeunScheduler(image_size=16))
    assert pipe.labels.resolve([207, "goldfish", "golden retriever"]) == [207, 1, 207]
    assert pipe.config.id2label[0] == "tench"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_labels=10), r"`class_labels` has 10, outside the valid range \[0, 9\]"),
        (dict(class_labels=-1), "outside the valid range"),
        (dict(class_labels="dragon"), "unknown class name 'dragon'"),
        (dict(class_labels="shark"), "Did you mean one of"),
        (dict(class_labels=[]), "at least one class"),
        (dict(class_labels=[1.5]), "must be integer class ids or names, got float 1.5"),
        (dict(class_labels=3.0), "must be integer class ids or names, got float 3.0"),
        (dict(class_labels=1, num_images_per_prompt=0), "`num_images_per_prompt` must be an integer >= 1, got 0"),
        (dict(class_labels=1, guidance_scale=float("nan")), "`guidance_scale` must be a finite number >= 0, got nan"),
        (dict(class_labels=1, guidance_scale=float("inf")), "`guidance_scale` must be a finite number >= 0, got inf"),
        (dict(class_labels=1, guidance_interval=(float("nan"), 1.0)), "`guidance_interval` must be"),
        (dict(class_labels=1, latents=torch.full((1, 3, 16, 16), float("nan"))), "`latents` holds non-finite values"),
        (dict(class_labels=1, sigmas=[float("inf"), 1.0]), "`sigmas` must be finite"),
        (dict(class_labels=1, guidance_interval=(1.0, 1.0)), "`guidance_interval` must be"),
        (dict(class_labels=1, guidance_interval=(2.0, 1.0)), "`guidance_interval` must be"),
        (dict(class_labels=1, guidance_scale=-1.0), "`guidance_scale` must be a finite number >= 0"),
        (dict(class_labels=1, num_inference_steps=0), "`num_inference_steps` must be an integer >= 1"),
        (dict(class_labels=[1, 2], generator=seeded(3)), "`generator` list has 3 generators for a batch of 2"),
        (dict(class_labels=1, latents=torch.zeros(1, 3, 8, 8)), r"`latents` must have shape \(1, 3, 16, 16\)"),
        (dict(class_labels=1, output_type="jpeg"), "`output_type` must be one of"),
        (dict(class_labels=1, callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipeline()(**{"num_inference_steps": 2, **kwargs})


def test_mismatched_scheduler_resolution_is_refused():
    pipe = tiny_pipeline()
    pipe = EPGPipeline(pipe.transformer, EPGHeunScheduler(image_size=32), id2label=TINY_LABELS)
    with pytest.raises(ValueError, match="scheduler `image_size`=32 differs"):
        pipe(class_labels=1, num_inference_steps=2)


@pytest.mark.parametrize("consistency, steps", [(False, 4), (True, 3)])
def test_an_image_does_not_depend_on_its_batch(consistency, steps):
    """Each image draws from its own generator; CPU kernels of other batch shapes move floats by ~2e-4 at most."""
    pipe = tiny_pipeline(consistency=consistency)
    kwargs = dict(num_inference_steps=steps, guidance_scale=2.0, guidance_interval=(0.0, float("inf")), output_type="pt")
    batch = pipe(class_labels=[1, 2, 3], generator=seeded(3), **kwargs).images
    for i, label in enumerate([1, 2, 3]):
        single = pipe(class_labels=label, generator=seeded(1, start=i), **kwargs).images
        torch.testing.assert_close(single[0], batch[i], atol=1e-3, rtol=0)
    again = pipe(class_labels=[1, 2, 3], generator=seeded(3), **kwargs).images
    assert torch.equal(again, batch)  # same seeds, same images
    other = pipe(class_labels=[1, 2, 3], generator=seeded(3, start=10), **kwargs).images
    assert not torch.allclose(other, batch)


def test_network_evaluations_follow_guidance_interval():
    pipe = tiny_pipeline()
    grid = pipe(class_labels=[1, 2], num_inference_steps=16, guidance_scale=1.0, output_type="latent")
    assert grid.num_network_evaluations == 30
    # 16 points at 16 px: the default interval (0.19, 1.61] holds 3 grid points, each evaluated twice
    guided = pipe(class_labels=[1, 2], num_inference_steps=16, guidance_scale=2.5, output_type="latent")
    assert guided.num_network_evaluations == 36
    everywhere = pipe(class_labels=1, num_inference_steps=16, guidance_scale=2.5,
                      guidance_interval=(0.0, float("inf")), output_type="latent")
    assert everywhere.num_network_evaluations == 60
    assert not torch.allclose(grid.images, guided.images[:2])


def test_guidance_batches_both_branches_in_one_forward():
    pipe = tiny_pipeline()
    batch_sizes = []
    pipe.transformer.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    pipe(class_labels=[1, 2], num_inference_steps=16, guidance_scale=2.5)
    assert sorted(set(batch_sizes)) == [2, 4] and batch_sizes.count(4) == 6 and len(batch_sizes) == 30


def test_output_types():
    pipe = tiny_pipeline()

    def call(output_type, **extra):
        return pipe(class_labels=[1, 2], num_inference_steps=2, generator=seeded(2), output_type=output_type, **extra)

    pt = call("pt").images
    assert pt.shape == (2, 3, 16, 16) and 0 <= pt.min() and pt.max() <= 1
    np_images = call("np").images
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(np_images, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = call("pil").images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    np.testing.assert_array_equal(np.asarray(pil[1]), (np_images[1] * 255).round().astype(np.uint8))
    latent = call("latent").images
    mean, std = torch.tensor(pipe.config.image_mean), torch.tensor(pipe.config.image_std)
    assert torch.allclose((latent * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0, 1), pt, atol=1e-6)
    images, evaluations = call("pt", return_dict=False)
    assert torch.equal(images, pt) and evaluations == 2


def test_num_images_per_prompt_and_latents():
    pipe = tiny_pipeline()
    out = pipe(class_labels=["goldfish", 2], num_images_per_prompt=2, num_inference_steps=2, output_type="pt")
    assert out.images.shape[0] == 4
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    a = pipe(class_labels=1, latents=noise, num_inference_steps=3, output_type="pt").images
    b = pipe(class_labels=1, generator=torch.Generator().manual_seed(5), num_inference_steps=3, output_type="pt").images
    assert torch.equal(a, b)


def test_callback_runs_once_per_evaluation_and_can_replace_latents():
    pipe = tiny_pipeline()
    seen = []

    def callback(pipeline, i, t, kwargs):
        seen.append(i)
        if i == pipeline.num_timesteps - 1:
            return {"latents": torch.zeros_like(kwargs["latents"])}
        return {}

    out = pipe(class_labels=1, num_inference_steps=4, output_type="latent", callback_on_step_end=callback)
    assert seen == list(range(pipe.num_timesteps)) == list(range(6))
    assert torch.count_nonzero(out.images) == 0


def test_bf16_pipeline_runs_and_stays_finite():
    pipe = tiny_pipeline()
    reference = pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=2.0, generator=seeded(2),
                     output_type="pt").images
    pipe.transformer.to(torch.bfloat16)
    out = pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=2.0, generator=seeded(2), output_type="pt")
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    assert (out.images - reference).abs().mean() < 0.05
    assert len(pipe(class_labels=1, num_inference_steps=2, output_type="pil").images) == 1


@pytest.mark.parametrize("consistency", [False, True])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_pipeline_round_trip(tmp_path, consistency, variant):
    pipe = tiny_pipeline(consistency=consistency)
    pipe.register_to_config(default_guidance_scale=2.0, default_num_inference_steps=3)
    if variant:
        pipe.transformer.to(torch.float16)
    pipe.save_pretrained(tmp_path, variant=variant)
    loaded = EPGPipeline.from_pretrained(tmp_path, variant=variant, dtype=torch.float16 if variant else None)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is (EPGConsistencyScheduler if consistency else EPGHeunScheduler)
    assert loaded.config.id2label == TINY_LABELS and loaded.labels.resolve("goldfish") == [1]
    assert loaded.config.default_guidance_scale == 2.0
    a, b = (p(class_labels=["goldfish", 7], generator=seeded(2), output_type="latent") for p in (pipe, loaded))
    assert torch.equal(a.images, b.images) and a.num_network_evaluations == b.num_network_evaluations


def test_progress_bar_counts_network_evaluations(monkeypatch):
    pipe = tiny_pipeline()
    seen = {}
    real = pipe.progress_bar

    def recording(total):
        bar = real(total=total)
        seen["total"], update = total, bar.update
        seen["updates"] = []
        bar.update = lambda n=1: (seen["updates"].append(n), update(n))
        return bar

    monkeypatch.setattr(pipe, "progress_bar", recording)
    out = pipe(class_labels=1, num_inference_steps=4, guidance_scale=2.0, guidance_interval=(0.0, float("inf")))
    assert seen["total"] == sum(seen["updates"]) == out.num_network_evaluations == 12  # 6 steps, each guided
