"""EPGPipeline: class-conditional pixel-space sampling with EPG diffusion or consistency models."""

import inspect
import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from .. import sigmas as sm
from ..models import EPGTransformer2DModel
from ..schedulers.base import EPGSchedulerBase
from .inputs import NonFiniteSampleError, check_sampling, check_scale, check_strength, image_tensor
from .labels import (
    IMAGENET_MEAN,
    IMAGENET_STD_X2,
    LabelMap,
    check_id2label,
    check_normalisation,
    imagenet_id2label,
)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from epg_diffusers import EPGPipeline

        >>> pipe = EPGPipeline.from_pretrained("path/to/EPG-XL16-imagenet256")
        >>> images = pipe(class_labels=[207, "goldfish"], num_inference_steps=32, guidance_scale=2.5).images
        >>> images[0].save("golden_retriever.png")
        >>> edited = pipe(class_labels="goldfish", image=images[0], strength=0.5).images[0]  # image-to-image
        ```
"""

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class EPGPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): the generated images.
        num_network_evaluations (`int`): network evaluations spent per image (a guided evaluation counts 2).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    num_network_evaluations: int


class EPGPipeline(DiffusionPipeline):
    """Class-conditional image generation with an EPG generator and an EPG scheduler.

    With :class:`EPGHeunScheduler` (or another EPG sampler) it samples a diffusion model with interval
    classifier-free guidance or autoguidance; with :class:`EPGConsistencyScheduler` it samples a consistency model
    in one or a few steps. Given an ``image``, it edits it (SDEdit): noise to the level ``strength`` selects, then
    denoise with the label.

    Args:
        transformer ([`EPGTransformer2DModel`]): the generator.
        scheduler ([`EPGHeunScheduler`], [`EPGConsistencyScheduler`] or another EPG scheduler): the sampler.
        guidance_transformer ([`EPGTransformer2DModel`], *optional*): a weaker model of the same data (e.g. an early
            checkpoint) for autoguidance; saved and loaded with the pipeline.
        id2label (`dict[int, str]`, *optional*): class names (comma-separated synonyms allowed); defaults to the
            ImageNet-1k names when the model has 1000 classes. Saved in `model_index.json`.
        image_mean (`list[float]`), image_std (`list[float]`): the per-channel normalisation the model was
            trained with (default: ImageNet mean and 2 x ImageNet std, so that sigma_data = 0.5).
        default_num_inference_steps (`int`, *optional*): steps when the call gives none (unset: the scheduler's
            `default_num_inference_steps`, e.g. 32 Heun points or 1 consistency step).
        default_guidance_scale (`float`, defaults to 1.0): guidance when the call gives none (1 = off).
        default_guidance_interval (`list[float]`, defaults to `[0.19, 1.61]`): unshifted sigma interval
            (low exclusive, high inclusive) in which guidance is applied when the call gives none; `None`
            guides every evaluation.
        default_autoguidance_scale (`float`, defaults to 0.0): autoguidance when the call gives none (0 = off).
    """

    model_cpu_offload_seq = "transformer->guidance_transformer"
    _optional_components = ["guidance_transformer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: EPGTransformer2DModel,
        scheduler: EPGSchedulerBase,
        guidance_transformer: EPGTransformer2DModel | None = None,
        id2label: dict | None = None,  # int keys; JSON turns them into strings, normalised below
        image_mean: list[float] = IMAGENET_MEAN,
        image_std: list[float] = IMAGENET_STD_X2,
        default_num_inference_steps: int | None = None,
        default_guidance_scale: float = 1.0,
        default_guidance_interval: list[float] | None = sm.GUIDANCE_INTERVAL,
        default_autoguidance_scale: float = 0.0,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, guidance_transformer=guidance_transformer)
        if id2label is None and transformer.config.num_classes == 1000:
            id2label = imagenet_id2label()
        id2label = {int(k): v for k, v in (id2label or {}).items()}
        check_normalisation(image_mean, image_std, transformer.config.in_channels)
        check_id2label(id2label, transformer.config.num_classes)
        steps = 1 if default_num_inference_steps is None else default_num_inference_steps  # None: the scheduler's
        check_sampling(steps, default_guidance_scale, default_guidance_interval, "default_")
        check_scale(default_autoguidance_scale, "default_autoguidance_scale")
        if guidance_transformer is not None:
            self.check_guidance_transformer(guidance_transformer)
        self.register_to_config(
            id2label=id2label,
            image_mean=[float(v) for v in image_mean],
            image_std=[float(v) for v in image_std],
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=float(default_guidance_scale),
            default_guidance_interval=list(default_guidance_interval) if default_guidance_interval else None,
            default_autoguidance_scale=float(default_autoguidance_scale),
        )
        self.labels = LabelMap(id2label, transformer.config.num_classes)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=False)

    # [package only] Hub and saving hooks; the code saved with a pipeline has its own (epg_diffusers/remote_code.py).
    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' ``load_config``, with the saved code files' entries pointed at this package's classes.

        A folder carries ``pipeline_epg.py`` and component code for diffusers alone (``trust_remote_code=True``);
        ``EPGPipeline.from_pretrained`` loads this package's classes instead and needs no remote code.
        """
        from ..remote_code import package_entries

        result = super().load_config(*args, **kwargs)
        package_entries(result[0] if isinstance(result, tuple) else result)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a folder or a Hub repo id ``"org/name"``, with ``DiffusionPipeline.from_pretrained``'s arguments.

        A repo id is first turned into a local snapshot (``revision``, ``cache_dir``, ``token``,
        ``local_files_only`` and ``HF_HUB_OFFLINE=1`` honoured; ``epg_diffusers.hub.snapshot_path``).
        """
        from ..hub import snapshot_path

        return super().from_pretrained(snapshot_path(pretrained_model_name_or_path, **kwargs), **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """``DiffusionPipeline.save_pretrained``, plus the code that lets diffusers alone load the folder.

        The folder gets ``pipeline_epg.py``, ``transformer/transformer_epg.py`` and the scheduler's module, generated
        from this package, and ``model_index.json`` names them. ``push_to_hub=True`` (with ``repo_id``) then
        uploads it with an EPG model card (``epg_diffusers.hub.push_to_hub``).
        """
        from ..hub import push_to_hub
        from ..remote_code import write_remote_code

        push = {k: kwargs.pop(k) for k in ("push_to_hub", "repo_id", "private", "token", "create_pr",
                                           "commit_message") if k in kwargs}
        super().save_pretrained(save_directory, **kwargs)
        write_remote_code(save_directory, self)
        if push.pop("push_to_hub", False):
            push_to_hub(save_directory, push.pop("repo_id", None) or os.path.basename(os.path.abspath(save_directory)),
                        **push)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload this pipeline with an EPG model card; arguments of ``epg_diffusers.hub.push_to_hub``."""
        from ..hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # [end package only]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class ids of ImageNet-style names; a single string is one label."""
        return self.labels.ids(label)

    def check_guidance_transformer(self, guide) -> None:
        """The autoguidance network must read the same images and labels as the generator."""
        keys = ("sample_size", "patch_size", "in_channels", "num_classes")
        if not hasattr(guide, "config") or any(guide.config.get(k) != self.transformer.config[k] for k in keys):
            raise ValueError(f"`guidance_transformer` must match the transformer's {', '.join(keys)}.")

    def check_inputs(self, num_inference_steps, guidance_scale, guidance_interval, output_type, callback_inputs,
                     num_images_per_prompt: int = 1):
        if self.scheduler.config.image_size != self.transformer.config.sample_size:
            raise ValueError(
                f"scheduler `image_size`={self.scheduler.config.image_size} differs from the transformer's "
                f"`sample_size`={self.transformer.config.sample_size}."
            )
        check_sampling(num_inference_steps, guidance_scale, guidance_interval)
        images = num_images_per_prompt
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        unknown = [k for k in callback_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` has {unknown}; allowed: {self._callback_tensor_inputs}.")

    def resolve_guidance(self, guidance_scale, autoguidance_scale, guidance_transformer):
        """(classifier-free scale, autoguidance scale, autoguidance network or None); the two are exclusive."""
        guide = guidance_transformer if guidance_transformer is not None else self.guidance_transformer
        if autoguidance_scale is None:
            autoguidance_scale = self.config.get("default_autoguidance_scale", 0.0) if guide is not None else 0.0
        check_scale(autoguidance_scale, "autoguidance_scale")
        if autoguidance_scale == 0:
            return self.config.default_guidance_scale if guidance_scale is None else guidance_scale, 0.0, None
        if guide is None:
            raise ValueError("`autoguidance_scale` needs a weaker model: pass `guidance_transformer=` or build the "
                             "pipeline with one.")
        if guidance_scale is not None and guidance_scale != 1:
            raise ValueError("classifier-free guidance (`guidance_scale`) and autoguidance (`autoguidance_scale`) are "
                             "exclusive: set `guidance_scale=1` or `autoguidance_scale=0`.")
        self.check_guidance_transformer(guide)
        return 1.0, float(autoguidance_scale), guide

    def prepare_latents(self, batch_size, generator, latents, device, image=None, start_sigma=None) -> torch.Tensor:
        """x_T = init_noise_sigma * eps; with an ``image``, x = image + start_sigma * eps (eps: ``latents`` if
        given, unit Gaussian float32 noise otherwise)."""
        config = self.transformer.config
        shape = (batch_size, config.in_channels, config.sample_size, config.sample_size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"`generator` list has {len(generator)} generators for a batch of {batch_size} images.")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        elif not torch.isfinite(latents).all():
            raise ValueError("`latents` holds non-finite values (NaN or inf).")
        latents = latents.to(device=device, dtype=torch.float32)
        if image is None:
            return latents * self.scheduler.init_noise_sigma
        pixels = image_tensor(image, config.sample_size, config.in_channels).to(device)
        if len(pixels) not in (1, batch_size):
            raise ValueError(f"`image` has {len(pixels)} images for a batch of {batch_size}: give 1 or {batch_size}.")
        mean = torch.tensor(self.config.image_mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.config.image_std, device=device).view(1, -1, 1, 1)
        x0 = ((pixels - mean) / std).expand(shape)  # the model's normalised units
        return x0 + (start_sigma or 0.0) * latents

    def guided_steps(self, guidance_scale: float, guidance_interval) -> list[bool]:
        """Which entries of ``scheduler.timesteps`` run the batched conditional + unconditional forward."""
        unshifted = self.scheduler.sigmas[:-1] / self.scheduler.sigma_shift
        return sm.guided_evaluations(unshifted, guidance_scale, guidance_interval)

    def network(self, model_input, t, labels, null_labels, guided: bool, guide, autoguidance_scale) -> tuple:
        """(the (guided) network output G for this evaluation, the network evaluations it cost per image).

        Classifier-free: G = F_u + w (F_c - F_u), both branches in one batched forward. Autoguidance (the reference's
        ``autog``): G = F_c + w (F_c - F_poor) with the weaker ``guide``, two forwards; EDM2's weight is 1 + w.
        """
        if guide is not None:
            cond = self.transformer(model_input, t.expand(len(labels)), labels, return_dict=False)[0].float()
            poor = guide(model_input.to(guide.dtype), t.expand(len(labels)), labels, return_dict=False)[0].float()
            return cond + autoguidance_scale * (cond - poor), 2
        if not guided:
            return self.transformer(model_input, t.expand(len(labels)), labels, return_dict=False)[0].float(), 1
        both = torch.cat([model_input, model_input])  # conditional and unconditional branches in one forward
        cond, uncond = self.transformer(both, t.expand(len(both)), torch.cat([labels, null_labels]),
                                        return_dict=False)[0].float().chunk(2)
        return uncond + self._guidance_scale * (cond - uncond), 2

    def postprocess(self, latents: torch.Tensor, output_type: str):
        """Un-normalise with the training normalisation and convert to ``output_type``."""
        if output_type == "latent":
            return latents
        mean = torch.tensor(self.config.image_mean, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(self.config.image_std, device=latents.device).view(1, -1, 1, 1)
        images = (latents.float() * std + mean).clamp(0, 1)
        return self.image_processor.postprocess(images, output_type=output_type)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        class_labels: int | str | list[int | str] | torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval: tuple[float, float] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        image=None,
        strength: float = 0.8,
        autoguidance_scale: float | None = None,
        guidance_transformer: EPGTransformer2DModel | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> EPGPipelineOutput | tuple:
        r"""
        Generate images of the given classes, or edit ``image`` towards them.

        Args:
            class_labels (`int`, `str`, `list[int | str]` or `torch.Tensor`): class ids or names (a single string
                is one label; names may be any comma-separated synonym in `id2label`, case-insensitive).
            num_inference_steps (`int`, *optional*): Karras grid points (Heun: 32 in the paper, 62 evaluations plus
                guidance), or steps for the consistency scheduler. Defaults from the pipeline config.
            guidance_scale (`float`, *optional*): classifier-free guidance w (out = u + w (c - u)); 1 disables it.
            guidance_interval (`tuple[float, float]`, *optional*): unshifted sigma range (low, high] where guidance
                runs; `(0, float("inf"))` guides every step. Defaults from the pipeline config ((0.19, 1.61]).
            num_images_per_prompt (`int`, defaults to 1): images per label.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): the initial noise and the noise of
                stochastic samplers; a list gives every image its own, so an image does not depend on its batch.
            latents (`torch.Tensor`, *optional*): unit Gaussian noise of shape (B, C, H, W) to start from (with an
                `image`: the noise added to it).
            sigmas (`list[float]`, *optional*): custom unshifted, decreasing sigmas instead of `num_inference_steps`.
            image (PIL image, list of them, array or tensor in [0, 1], *optional*): image-to-image (SDEdit): the
                image (RGB, the model's size; one, or one per output image) is noised and denoised with the labels.
            strength (`float`, defaults to 0.8): how much of the schedule image-to-image runs: 1 starts from the
                first sigma of the full schedule (image + sigma_max noise), 0 returns the image. Grid samplers run
                the last `int(strength * intervals)` intervals (diffusers' convention); the consistency scheduler
                starts at the sigma `strength` places on the Karras curve.
            autoguidance_scale (`float`, *optional*): autoguidance w: G = F_c + w (F_c - F_poor) at every evaluation
                with the weaker `guidance_transformer` (EDM2's weight is 1 + w); 0 disables it. Exclusive with
                classifier-free guidance. Defaults from the pipeline config (0).
            guidance_transformer ([`EPGTransformer2DModel`], *optional*): the weaker model for this call (default:
                the pipeline's).
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` (images in [0, 1]) or `"latent"`
                (the final state in normalised units).
            return_dict (`bool`, defaults to `True`): return an `EPGPipelineOutput` rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): called after every denoising step as
                `callback(pipe, i, t, callback_kwargs)`; may return a dict replacing `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback.

        Examples:

        Returns:
            [`EPGPipelineOutput`] or `tuple`: images and the network evaluations per image.
        """
        # 1. Resolve defaults and check inputs
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if sigmas is None:
            configured = self.config.default_num_inference_steps
            num_inference_steps = self.scheduler.resolve_steps(num_inference_steps, configured)
        guidance_scale, autoguidance_scale, guide = self.resolve_guidance(
            guidance_scale, autoguidance_scale, guidance_transformer)
        if guidance_interval is None:
            guidance_interval = self.config.default_guidance_interval
        self.check_inputs(
            num_inference_steps if sigmas is None else len(sigmas),
            guidance_scale, guidance_interval, output_type, callback_on_step_end_tensor_inputs, num_images_per_prompt,
        )
        self._guidance_scale, self._interrupt = float(guidance_scale), False
        device = self._execution_device
        labels = torch.tensor(self.labels.resolve(class_labels), device=device).repeat_interleave(num_images_per_prompt)
        null_labels = torch.full_like(labels, self.transformer.config.num_classes)

        # 2. Timesteps (image-to-image: the schedule's tail) and the evaluations that are guided
        steps = num_inference_steps if sigmas is None else None
        if image is None:
            self.scheduler.set_timesteps(steps, device=device, sigmas=sigmas)
            begin, start_sigma = 0, None
        elif hasattr(self.scheduler, "set_image_to_image_timesteps"):
            start_sigma = self.scheduler.set_image_to_image_timesteps(steps, check_strength(strength), device, sigmas)
            begin = self.scheduler.begin_index or 0
        else:
            raise ValueError(f"image-to-image needs an EPG scheduler, got {type(self.scheduler).__name__}.")
        timesteps = self.scheduler.timesteps[begin:]
        self._num_timesteps = len(timesteps)
        guided = self.guided_steps(self._guidance_scale, guidance_interval)[begin:]
        stochastic = "generator" in inspect.signature(self.scheduler.step).parameters
        step_kwargs = {"generator": generator} if stochastic else {}
        churn = getattr(self.scheduler, "churn", None)  # EPG schedulers: noise added before an evaluation (EDM churn)

        # 3. Initial state x_T, or the noised image (the state is kept in float32 whatever the model dtype)
        latents = self.prepare_latents(len(labels), generator, latents, device, image, start_sigma)

        # 4. Denoising loop: one network evaluation per entry of `timesteps`, two where guided
        evaluations = 0
        total = self.scheduler.network_evaluations(self._guidance_scale, guidance_interval, guide is not None, begin)
        with self.progress_bar(total=total) as progress_bar:  # counts network evaluations
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                if churn is not None:
                    latents = churn(latents, t, generator)
                model_input = self.scheduler.scale_model_input(latents, t).to(self.transformer.dtype)
                output, cost = self.network(model_input, t, labels, null_labels, guided[i], guide, autoguidance_scale)
                evaluations += cost
                latents = self.scheduler.step(output, t, latents, return_dict=False, **step_kwargs)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for name in callback_on_step_end_tensor_inputs:
                        callback_kwargs[name] = locals()[name]
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update(cost)

        # 5. Refuse non-finite samples (rather than return black images), then post-process
        bad = (~torch.isfinite(latents.flatten(1))).any(1).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteSampleError(f"sampling gave non-finite values (NaN or inf) in image(s) {bad} of the batch; "
                                       "check the weights, `guidance_scale` and `latents`.")
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, evaluations)
        return EPGPipelineOutput(images=images, num_network_evaluations=evaluations)
