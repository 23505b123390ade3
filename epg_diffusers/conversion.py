"""``epg convert``: the reference's checkpoints (``nnet_ema.pth`` / ``nnet.pth``) as diffusers folders.

A generator becomes an :class:`EPGPipeline` folder (diffusion: :class:`EPGHeunScheduler` with the published
sampling settings; consistency: one-step :class:`EPGConsistencyScheduler`), an RCM encoder becomes an
:class:`RCMEncoderModel` folder. Files are read with ``torch.load(weights_only=True)`` (no code runs), every
key and shape is checked, and the output holds safetensors weights, an fp16 variant and a model card.

How a checkpoint is classified:

* generator or encoder: ``decoder_blocks.*`` keys (generator) or ``projection_head.*`` keys (RCM encoder);
* diffusion or consistency: the two have identical keys, so this comes from ``kind`` (``--kind``), else
  from the folder name: the published folders (:data:`PUBLISHED`) are known, and a name containing
  ``onestep`` or ``consistency`` means consistency; anything else must say ``kind``;
* class-conditional or not: ``class_embed.weight`` present (its rows give ``num_classes`` + 1). A generator
  without it is converted as unconditional with ``num_classes=1`` and a zero class embedding, which adds
  nothing to the CLS and time tokens (only label 0 is meaningful; guidance has no effect).
"""

import argparse
import inspect
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from . import sigmas as sm
from .cli import finite_float, positive_int, sigma_float
from .hub import push_to_hub, save_for_hub
from .model_card import IMAGENET, model_card
from .models import EPGTransformer2DModel, RCMEncoderModel, get_preset
from .models.loading import check_state_dict, load_state_dict_file
from .pipelines import EPGPipeline
from .schedulers import EPGConsistencyScheduler, EPGHeunScheduler

KINDS = ("diffusion", "consistency", "encoder")
# The reference publishes no license for its weights: cards of converted folders point at its repo for the terms.
REFERENCE_LICENSE = dict(license="other", license_name="epg-reference-weights",
                         license_link="https://huggingface.co/jiachenlei/EPG")


@dataclass(frozen=True)
class Converted:
    """What ``convert`` wrote."""

    output_dir: Path
    checkpoint: Path
    kind: str
    class_conditional: bool
    preset: str | None


@dataclass(frozen=True)
class Published:
    """A folder of the reference's Hub repo ``jiachenlei/EPG`` and how it is sampled."""

    preset: str
    kind: str
    fid: float | None = None  # FID-50k reported by the reference authors
    guidance_scale: float = 1.0
    guidance_published: bool = True  # False: the reference gives no scale; the XL/16 value is the default


PUBLISHED = {
    "EPG-XL16-imagenet256": Published("EPG-XL/16", "diffusion", 2.04, 2.5),
    "EPG-XXL16-imagenet256": Published("EPG-XXL/16", "diffusion", 1.87, 2.5, guidance_published=False),
    "EPG-G16-imagenet256": Published("EPG-G/16", "diffusion", 1.58, 2.5, guidance_published=False),
    "EPG-L32-imagenet512": Published("EPG-L/32", "diffusion", 2.35, 3.2),
    "EPG-L16-imagenet256-onestep": Published("EPG-L/16", "consistency", 8.82),
    "RCM-B-IN256": Published("RCM-B/16", "encoder"),
    "RCM-B-IN512": Published("RCM-B/32", "encoder"),
    "RCM-L-IN256": Published("RCM-L/16", "encoder"),
}


def find_checkpoint(source: str | Path, weights: str | None = None) -> Path:
    """The state-dict file of ``source``: the file itself, or in a reference folder ``nnet_ema.pth`` (EMA,
    what the reference samples with), else ``nnet.pth``; ``weights`` = ``"ema"`` / ``"online"`` forces one."""
    source = Path(source)
    if weights not in (None, "ema", "online"):
        raise ValueError(f"`weights` must be 'ema', 'online' or None, got {weights!r}.")
    if source.is_file():
        return source
    if not source.is_dir():
        raise ValueError(f"`source`={str(source)!r} is neither a checkpoint file nor a reference folder.")
    names = {"ema": ["nnet_ema.pth"], "online": ["nnet.pth"], None: ["nnet_ema.pth", "nnet.pth"]}[weights]
    for name in names:
        if (source / name).is_file():
            return source / name
    raise ValueError(f"`source`={str(source)!r} holds no {' or '.join(names)}.")


def detect_kind(state_dict: dict, kind: str | None, folder_name: str) -> str:
    """'diffusion', 'consistency' or 'encoder' for a reference state dict (see the module docstring)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    if any(key.startswith("decoder_blocks.") for key in state_dict):
        found = "generator"
    elif any(key.startswith("projection_head.") for key in state_dict):
        found = "encoder"
    else:
        raise ValueError("checkpoint has neither decoder_blocks.* (EPG generator) nor projection_head.* (RCM encoder) "
                         "keys.")
    if (kind == "encoder") != (found == "encoder") and kind is not None:
        what = "an RCM encoder (projection_head.*)" if found == "encoder" else "an EPG generator (decoder_blocks.*)"
        raise ValueError(f"`kind`={kind!r}, but the checkpoint is {what}.")
    if found == "encoder" or kind is not None:
        return kind or "encoder"
    if folder_name in PUBLISHED:
        return PUBLISHED[folder_name].kind
    if "onestep" in folder_name.lower() or "consistency" in folder_name.lower():
        return "consistency"
    raise ValueError(
        "a diffusion and a consistency checkpoint have the same keys; pass `kind`='diffusion' or 'consistency' "
        f"(--kind). Folder {folder_name!r} is not a published one (EPG-*-onestep folders are consistency models)."
    )


def resolve_architecture(state_dict: dict, kind: str, preset: str | None, arch: dict) -> tuple[type, dict]:
    """(model class, config) from a preset and explicit arguments; head sizes come from the checkpoint.

    ``num_classes`` (generators) and the projector sizes (encoders) are read from the weights unless given.
    """
    cls = RCMEncoderModel if kind == "encoder" else EPGTransformer2DModel
    unknown = sorted(set(arch) - set(inspect.signature(cls.__init__).parameters) - {"self"})
    if unknown:
        raise ValueError(f"{cls.__name__} has no architecture argument {unknown[0]!r}.")
    if preset is None and not arch:
        raise ValueError("pass `preset` (--preset, e.g. 'EPG-XL/16') or explicit architecture arguments.")
    config = {}
    if preset is not None:
        class_name, config = get_preset(preset)
        if class_name != cls.__name__:
            raise ValueError(f"`preset`={preset!r} describes a {class_name}, but the checkpoint is a {kind} "
                             "checkpoint.")
    config.update(arch)
    if kind == "encoder":
        config.setdefault("projector_hidden_dim", state_dict["projection_head.0.weight"].shape[0])
        config.setdefault("projector_dim", state_dict["projection_head.6.weight"].shape[0])
    elif "class_embed.weight" in state_dict:
        config.setdefault("num_classes", state_dict["class_embed.weight"].shape[0] - 1)
    elif config.setdefault("num_classes", 1) != 1:
        raise ValueError(f"`num_classes`={config['num_classes']}, but the checkpoint has no class_embed.weight "
                         "(unconditional).")
    return cls, config


def load_reference_model(state_dict: dict, kind: str, preset: str | None, arch: dict, name: str = "checkpoint"):
    """Validate a reference state dict and build its model; returns (model, is class-conditional)."""
    cls, config = resolve_architecture(state_dict, kind, preset, arch)
    conditional = kind == "encoder" or "class_embed.weight" in state_dict
    if not conditional:  # unconditional: a zero class embedding (one class + null) adds nothing
        width = state_dict["cls_token"].shape[-1]
        state_dict = {**state_dict, "class_embed.weight": torch.zeros(2, width, dtype=state_dict["cls_token"].dtype)}
    with torch.device("meta"):  # check every key and shape before allocating a real model
        expected = cls(**config)
    try:
        check_state_dict(expected, state_dict)
    except ValueError as error:
        what = f"`preset`={preset!r}" if preset else "the given architecture"
        raise ValueError(f"{name} does not match {what}: {error}") from error
    return cls.from_single_file(state_dict, **config), conditional


def build_pipeline(model, kind: str, steps: int | None, guidance_scale: float | None, interval) -> EPGPipeline:
    """An EPGPipeline around a generator with the reference's sampler and the given sampling defaults."""
    scheduler_class = EPGHeunScheduler if kind == "diffusion" else EPGConsistencyScheduler
    return EPGPipeline(
        model,
        scheduler_class(image_size=model.config.sample_size),
        id2label={0: "unconditional"} if model.config.num_classes == 1 else None,
        default_num_inference_steps=steps or scheduler_class.default_num_inference_steps,
        default_guidance_scale=1.0 if guidance_scale is None else guidance_scale,
        default_guidance_interval=list(interval or sm.GUIDANCE_INTERVAL),
    )


def _provenance(checkpoint: Path, kind: str, conditional: bool, published: Published | None) -> str:
    """The model card's paragraph on where the weights come from and what the reference reports."""
    ema = " (EMA weights, which the reference samples with)" if checkpoint.name == "nnet_ema.pth" else ""
    name = f"{checkpoint.parent.name}/{checkpoint.name}"
    text = f"Converted with `epg convert` from the reference checkpoint `{name}`{ema}."
    if kind != "encoder" and not conditional:
        text += " It has no class embedding: the model is unconditional (pass `class_labels=0`)."
    if published is None or published.fid is None:
        return text
    if published.kind == "consistency":
        settings = "one network evaluation at sigma_max"
    else:
        scale = f"scale {published.guidance_scale}" if published.guidance_published else "a scale it does not publish"
        settings = f"32 Heun grid points, guidance with {scale} in (0.19, 1.61], 74 network evaluations"
    text += f"\n\nFID-50k reported by the reference authors: **{published.fid}** ({settings})."
    if not published.guidance_published:
        text += " This folder's default guidance scale, 2.5, is the EPG-XL/16 value: tune it for this model."
    return text


def convert(
    source: str | Path,
    output_dir: str | Path,
    preset: str | None = None,
    kind: str | None = None,
    weights: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    fp16_variant: bool = True,
    repo_id: str | None = None,
    overwrite: bool = False,
    **arch,
) -> Converted:
    """Convert a reference checkpoint into a diffusers folder (see the module docstring for the rules).

    Args:
        source: a reference folder (``nnet_ema.pth`` preferred over ``nnet.pth``) or a state-dict file.
        output_dir: the folder to write (a pipeline folder, or a model folder for an encoder).
        preset: e.g. ``"EPG-XL/16"``; defaults to the published folder's preset when ``source`` is one.
        kind: ``"diffusion"``, ``"consistency"`` or ``"encoder"``; see the module docstring for the default.
        weights: ``"ema"`` or ``"online"`` to pick ``nnet_ema.pth`` or ``nnet.pth`` in a folder.
        num_inference_steps, guidance_scale, guidance_interval: sampling defaults stored in the pipeline
            (default: the published settings, else 32 Heun points without guidance, or one consistency step).
        fp16_variant: also write ``*.fp16.safetensors`` weights.
        repo_id: the repo id the model card's usage snippet loads (default: ``output_dir``).
        overwrite: replace a non-empty ``output_dir``.
        **arch: explicit architecture arguments (``depth=``, ``embed_dim=``, ...) for non-standard sizes.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ValueError(f"`output_dir`={str(output_dir)!r} is not empty; pass overwrite=True (--overwrite).")
    checkpoint = find_checkpoint(source, weights)
    folder_name = (Path(source) if Path(source).is_dir() else checkpoint.parent).resolve().name
    published = PUBLISHED.get(folder_name)
    if preset is None and published is not None:
        preset = published.preset
    state_dict = load_state_dict_file(checkpoint)
    kind = detect_kind(state_dict, kind, folder_name)
    model, conditional = load_reference_model(state_dict, kind, preset, arch, name=repr(str(checkpoint)))
    if guidance_scale is None and published is not None and kind == "diffusion":
        guidance_scale = published.guidance_scale
    obj = model if kind == "encoder" else build_pipeline(
        model, kind, num_inference_steps, guidance_scale, guidance_interval)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    save_for_hub(obj, output_dir, fp16_variant)
    scores = published if published is not None and published.kind == kind else None  # not for a forced --kind
    description = _provenance(checkpoint, kind, conditional, scores)
    model_card(output_dir, repo_id or str(output_dir), description, datasets=[IMAGENET] if published else None,
               **REFERENCE_LICENSE).save(output_dir / "README.md")
    return Converted(output_dir, checkpoint, kind, conditional, preset)


_ARCH_ARGS = {  # CLI flag -> (type, help); names are the model config's
    "sample_size": (positive_int, "image size in pixels"), "patch_size": (positive_int, "patch size"),
    "depth": (positive_int, "encoder blocks"), "embed_dim": (positive_int, "encoder width"),
    "num_heads": (positive_int, "encoder heads"),
    "decoder_depth": (positive_int, "decoder blocks"), "decoder_embed_dim": (positive_int, "decoder width"),
    "decoder_num_heads": (positive_int, "decoder heads"), "mlp_ratio": (float, "MLP width / width"),
    "num_classes": (positive_int, "classes (default: from class_embed.weight)"),
    "projector_hidden_dim": (positive_int, "encoder projector hidden width (default: from the weights)"),
    "projector_dim": (positive_int, "encoder projector output width (default: from the weights)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``epg convert``."""
    parser.add_argument("source", help="reference folder (nnet_ema.pth / nnet.pth) or a state-dict file")
    parser.add_argument("output_dir", help="diffusers folder to write")
    parser.add_argument("--preset", help="architecture, e.g. EPG-XL/16, EPG-L/32, RCM-B/16 "
                        "(default: from a published folder name)")
    parser.add_argument("--kind", choices=KINDS, help="checkpoint kind (default: from keys and folder name)")
    parser.add_argument("--weights", choices=("ema", "online"),
                        help="nnet_ema.pth or nnet.pth (default: nnet_ema.pth if present)")
    parser.add_argument("--num-inference-steps", type=positive_int, help="default steps stored in the pipeline")
    parser.add_argument("--guidance-scale", type=finite_float, help="default guidance scale stored in the pipeline")
    parser.add_argument("--guidance-interval", type=sigma_float, nargs=2, metavar=("LOW", "HIGH"),
                        help="default guidance interval, unshifted sigma (LOW, HIGH] (default: 0.19 1.61)")
    parser.add_argument("--fp16-variant", action=argparse.BooleanOptionalAction, default=True,
                        help="also write *.fp16.safetensors weights (default: yes)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then push the folder to this Hub repo (org/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    group = parser.add_argument_group("architecture (for sizes without a preset; overrides the preset)")
    for name, (kind, help_text) in _ARCH_ARGS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=help_text)


def run(args: argparse.Namespace) -> int:
    """Run ``epg convert``: convert, print a summary, optionally push."""
    arch = {name: getattr(args, name) for name in _ARCH_ARGS if getattr(args, name) is not None}
    result = convert(
        args.source, args.output_dir, preset=args.preset, kind=args.kind, weights=args.weights,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        guidance_interval=args.guidance_interval, fp16_variant=args.fp16_variant, repo_id=args.push_to_hub,
        overwrite=args.overwrite, **arch,
    )
    facts = [f"architecture {result.preset or 'from arguments'}"]
    if result.kind != "encoder":
        facts.insert(0, "class-conditional" if result.class_conditional else "unconditional")
    print(f"read {result.checkpoint}: {result.kind} checkpoint ({', '.join(facts)})")
    print(f"wrote {result.output_dir} (model card: {result.output_dir / 'README.md'})")
    if args.push_to_hub:
        info = push_to_hub(result.output_dir, args.push_to_hub, private=args.private or None)
        print(f"pushed to {getattr(info, 'commit_url', args.push_to_hub)}")
    return 0
