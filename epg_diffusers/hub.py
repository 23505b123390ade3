"""The Hugging Face Hub: resolving repo ids to local snapshots, model cards and ``push_to_hub``.

diffusers 0.42 cannot load a third-party package's pipeline from a repo id by itself (its download step
looks for the components' modules inside the repo), so :meth:`EPGPipeline.from_pretrained` first turns a
repo id into a local snapshot with :func:`snapshot_path`. Pushing uploads an explicit list of files (the
pipeline or model layout, safetensors only) and never optimizer states, accelerate checkpoints or logs.
"""

import argparse
import glob
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, is_offline_mode, snapshot_download

from . import __version__

# Never uploaded nor downloaded, whatever else a folder or repo holds (training output, resume state, logs).
NEVER_UPLOAD = [
    "*checkpoint-*", "*checkpoints/*", "*logs/*", "*optimizer*", "*random_states*", "*scaler.pt", "*.ckpt",
    "*.ckpt/*", "*.pth", "*.pt", "*.bin", "*.pkl", "*.pickle", "*events.out.tfevents*", "*.cache/*",
]
_COMPONENT_FILES = ["config.json", "scheduler_config.json", "*.safetensors", "*.safetensors.index*.json"]
_ROOT_FILES = ["README.md", "*.png", "*.jpg", "*.jpeg", "*.webp"]
_VARIANT_WEIGHTS = "*/*.*.safetensors"  # diffusion_pytorch_model.<variant>[-0000k-of-0000n].safetensors
CARD_TAGS = ["epg", "epg-diffusers", "pixel-space", "image-generation"]


def snapshot_path(
    pretrained_model_name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    variant: str | None = None,
    **_,
) -> str:
    """A local folder for a folder path or a Hub repo id (downloaded, or taken from the cache when offline).

    ``HF_HUB_OFFLINE=1`` or ``local_files_only=True`` never touches the network. Without ``variant`` the
    variant weight files (e.g. ``*.fp16.safetensors``) are not downloaded. Extra keyword arguments (those of
    ``from_pretrained``) are ignored.
    """
    if os.path.isdir(pretrained_model_name_or_path):
        return str(pretrained_model_name_or_path)
    repo_id = str(pretrained_model_name_or_path)
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        raise ValueError(
            f"`pretrained_model_name_or_path`={repo_id!r} is neither a folder nor a Hub repo id (org/name)."
        )
    return snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only or is_offline_mode(),
        force_download=force_download,
        ignore_patterns=NEVER_UPLOAD + ([] if variant else [_VARIANT_WEIGHTS]),
        library_name="epg-diffusers",
        library_version=__version__,
    )


def upload_files(folder: str | os.PathLike) -> list[str]:
    """The files of a pipeline folder (``model_index.json``) or model folder (``config.json``) that get pushed."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        components = sorted(k for k, v in index.items() if isinstance(v, list) and len(v) == 2
                            and all(isinstance(x, str) for x in v))  # ["library", "ClassName"]
        files = ["model_index.json"]
        for component in components:
            files += _component_files(folder, component)
    elif (folder / "config.json").is_file():
        files = _component_files(folder, "")
    else:
        raise ValueError(
            f"`folder`={str(folder)!r} is neither a pipeline folder (model_index.json) nor a model folder "
            "(config.json)."
        )
    files += [f for pattern in _ROOT_FILES for f in _matches(folder, "", pattern)]
    return sorted(set(files))


def _matches(folder: Path, sub: str, pattern: str) -> list[str]:
    base = folder / sub if sub else folder
    return [str(Path(sub) / p.name) if sub else p.name for p in base.glob(pattern) if p.is_file()]


def _component_files(folder: Path, component: str) -> list[str]:
    files = [f for pattern in _COMPONENT_FILES for f in _matches(folder, component, pattern)]
    config = folder / component / "config.json"
    if config.is_file() and not any(f.endswith(".safetensors") for f in files):
        raise ValueError(
            f"{str(config.parent)!r} has no .safetensors weights; save with `safe_serialization=True` (pickled "
            "weights are never pushed)."
        )
    if not files:
        raise ValueError(f"component folder {str(folder / component)!r} is missing or empty.")
    return files


def _describe(folder: Path) -> dict:
    """What a model card says about a saved pipeline or model, read from its configs (no weights loaded)."""
    from . import schedulers
    from .models import EPGTransformer2DModel, RCMEncoderModel
    from .pipelines import EPGPipeline

    if not (folder / "model_index.json").is_file():
        config = RCMEncoderModel.load_config(folder)
        return dict(kind="encoder", model=config)
    index = json.loads((folder / "model_index.json").read_text())
    scheduler_class = getattr(schedulers, index["scheduler"][1])
    scheduler = scheduler_class.from_config(scheduler_class.load_config(folder / "scheduler"))
    with torch.device("meta"):  # configs only: no weights read, no memory used
        transformer = EPGTransformer2DModel.from_config(EPGTransformer2DModel.load_config(folder / "transformer"))
    options = {k: index[k] for k in ("id2label", "image_mean", "image_std") if k in index}
    options.update({k: index[k] for k in index if k.startswith("default_")})
    pipe = EPGPipeline(transformer, scheduler, **options)
    steps = pipe.config.default_num_inference_steps or (32 if scheduler.order == 2 else 1)
    scale, interval = pipe.config.default_guidance_scale, pipe.config.default_guidance_interval
    scheduler.set_timesteps(steps)
    evaluations = len(scheduler.timesteps) + sum(pipe.guided_steps(scale, interval))
    kind = "consistency" if scheduler.order == 1 else "diffusion"
    n, names = transformer.config.num_classes, pipe.config.id2label
    ids = [207, 1] if n == 1000 else list(range(min(n, 2)))
    example = ids[:1] + [names[i].split(",")[0] if i in names else i for i in ids[1:]]  # an id and a name
    return dict(kind=kind, model=dict(transformer.config), scheduler=scheduler_class.__name__, steps=steps,
                guidance_scale=scale, guidance_interval=interval, evaluations=evaluations, example=example)


def _usage(info: dict, repo_id: str) -> str:
    if info["kind"] == "encoder":
        return (
            "```python\nimport torch\nfrom epg_diffusers import RCMEncoderModel  # pip install epg-diffusers\n"
            "from epg_diffusers import sigmas as sm\n\n"
            f'encoder = RCMEncoderModel.from_pretrained("{repo_id}")\n'
            "size = encoder.config.sample_size\n"
            "sigma = torch.tensor([0.5 * sm.resolution_shift(size)])  # shifted noise level\n"
            "x_sigma = torch.randn(1, 3, size, size)  # a noisy image in normalised pixels\n"
            "out = encoder(sm.c_in(sigma)[:, None, None, None] * x_sigma, sm.sigma_to_time(sigma))\n"
            "out.features, out.projection  # normed CLS token, projector output\n```\n"
        )
    return (
        "```python\nimport torch\nfrom epg_diffusers import EPGPipeline  # pip install epg-diffusers\n\n"
        f'pipe = EPGPipeline.from_pretrained("{repo_id}")\n'
        'pipe.to("cuda" if torch.cuda.is_available() else "cpu")\n'
        "generator = [torch.Generator().manual_seed(i) for i in range(2)]\n"
        f"out = pipe(class_labels={json.dumps(info['example'])}, generator=generator)\n"
        'out.images[0].save("sample.png")\n'
        f"print(out.num_network_evaluations)  # {info['evaluations']}\n```\n"
    )


def _details(info: dict) -> str:
    m = info["model"]
    lines = ["| | |", "| --- | --- |", f"| image size | {m['sample_size']} px, patch {m['patch_size']} |",
             f"| encoder depth / width / heads | {m['depth']} / {m['embed_dim']} / {m['num_heads']} |"]
    if info["kind"] == "encoder":
        lines.append(f"| projector hidden / output | {m['projector_hidden_dim']} / {m['projector_dim']} |")
        return "\n".join(lines) + "\n"
    classes = "unconditional (one class, label 0)" if m["num_classes"] == 1 else (
        f"{m['num_classes']} (label {m['num_classes']} is the null class)")
    steps = f"{info['steps']} grid points" if info["kind"] == "diffusion" else f"{info['steps']} step(s)"
    decoder = f"{m['decoder_depth']} / {m['decoder_embed_dim']} / {m['decoder_num_heads']}"
    lines += [
        f"| decoder depth / width / heads | {decoder} |",
        f"| classes | {classes} |",
        f"| scheduler | `{info['scheduler']}`, {steps} by default |",
    ]
    if info["kind"] == "diffusion":
        (low, high), scale = info["guidance_interval"] or (0, "inf"), info["guidance_scale"]
        guidance = f"scale {scale} for unshifted sigma in ({low}, {high}]" if scale != 1 else "off (scale 1)"
        lines.append(f"| guidance | {guidance} |")
    lines.append(f"| network evaluations per image | {info['evaluations']} |")
    return "\n".join(lines) + "\n"


def model_card(folder: str | os.PathLike, repo_id: str, description: str = "", license: str | None = None) -> ModelCard:
    """A model card for a saved EPG pipeline or encoder whose first code block is the real usage.

    Args:
        folder: the saved pipeline (``model_index.json``) or ``RCMEncoderModel`` folder.
        repo_id: the repo id (or path) that the usage snippet loads.
        description: extra Markdown (provenance, scores, training details) placed after the details table.
        license: an optional license identifier for the card metadata.
    """
    info = _describe(Path(folder))
    what = {
        "diffusion": "a class-conditional EPG diffusion model (x-prediction, guided Heun sampling)",
        "consistency": "an EPG one-step consistency model",
        "encoder": "an RCM encoder (EPG stage 1, self-supervised pre-training)",
    }[info["kind"]]
    tags = CARD_TAGS + (["rcm", "self-supervised"] if info["kind"] == "encoder" else [info["kind"]])
    tags += ["imagenet"] if info["model"].get("num_classes") == 1000 else []
    data = ModelCardData(library_name="diffusers", license=license, tags=tags)
    name = repo_id.rstrip("/").split("/")[-1]
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {name}\n\n"
        f"{what[0].upper() + what[1:]} that generates in pixel space without a VAE "
        '(EPG, "There is No VAE", ICLR 2026), in diffusers format.\n\n## Usage\n\n'
        f"{_usage(info, repo_id)}\n"
        "Load it with the `epg-diffusers` package (`pip install epg-diffusers`): diffusers' generic "
        "`DiffusionPipeline.from_pretrained` cannot resolve this package's components from a repo id.\n\n"
        f"## Details\n\n{_details(info)}"
        + (f"\n{description.strip()}\n" if description.strip() else "")
    )
    return ModelCard(text)


def _retarget(card_text: str, repo_id: str) -> str:
    """Point the usage snippet of an existing EPG card at ``repo_id``."""
    return re.sub(r'(\b(?:EPGPipeline|RCMEncoderModel)\.from_pretrained\()"[^"]*"', rf'\1"{repo_id}"', card_text)


def save_for_hub(obj, folder: str | os.PathLike, fp16_variant: bool = False) -> Path:
    """Save a pipeline or model with safetensors (plus an optional fp16 variant of the weights)."""
    folder = Path(folder)
    obj.save_pretrained(folder, safe_serialization=True)
    if fp16_variant:
        models = [(obj.transformer, folder / "transformer")] if hasattr(obj, "transformer") else [(obj, folder)]
        for model, path in models:  # re-read at half size; the caller's model is left untouched
            half = type(model).from_pretrained(path, dtype=torch.float16)
            half.save_pretrained(path, safe_serialization=True, variant="fp16")
    return folder


def push_to_hub(
    source,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload EPG weights (epg-diffusers)",
    model_card_text: str | None = None,
    fp16_variant: bool = False,
):
    """Push a saved folder, or an ``EPGPipeline`` / ``RCMEncoderModel`` object, to the Hub.

    Only the pipeline or model layout is uploaded (``model_index.json``, component configs, safetensors
    weights, ``README.md`` and root images); optimizer states, ``checkpoint-*`` folders, pickles and logs never
    are. The folder's ``README.md`` is written when missing (or when ``model_card_text`` is given) and an
    existing EPG card's usage snippet is pointed at ``repo_id``.

    Args:
        source: a folder path, or a pipeline / model (saved to a temporary folder first).
        repo_id: ``"org/name"``; the repo is created if needed.
        private, token, revision, create_pr, commit_message: as in ``HfApi.upload_folder``.
        model_card_text: Markdown for ``README.md`` instead of the generated card.
        fp16_variant: when ``source`` is an object, also save ``*.fp16.safetensors`` weights.
    """
    if not isinstance(source, (str, os.PathLike)):
        with tempfile.TemporaryDirectory() as tmp:
            save_for_hub(source, tmp, fp16_variant)
            return push_to_hub(tmp, repo_id, private=private, token=token, revision=revision, create_pr=create_pr,
                               commit_message=commit_message, model_card_text=model_card_text)
    folder = Path(source)
    upload_files(folder)  # validates the layout before anything is written or created
    readme = folder / "README.md"
    if model_card_text is not None:
        readme.write_text(model_card_text)
    elif readme.is_file():
        readme.write_text(_retarget(readme.read_text(), repo_id))
    else:
        model_card(folder, repo_id).save(readme)
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo.repo_id, folder_path=folder, repo_type="model", revision=revision, create_pr=create_pr,
        commit_message=commit_message, allow_patterns=[glob.escape(f) for f in upload_files(folder)],
        ignore_patterns=NEVER_UPLOAD,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of a ``push`` command: a saved folder and a repo id."""
    parser.add_argument("folder", help="a saved EPG pipeline or encoder folder (e.g. from `epg convert`)")
    parser.add_argument("repo_id", help="target Hub repo, org/name (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")


def run(args: argparse.Namespace) -> int:
    """Push ``args.folder`` to ``args.repo_id``."""
    info = push_to_hub(args.folder, args.repo_id, private=args.private or None, revision=args.revision,
                       create_pr=args.create_pr)
    print(f"pushed {args.folder} to {getattr(info, 'commit_url', args.repo_id)}")
    return 0
