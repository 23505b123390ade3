"""``epg space``: write a self-contained Hugging Face Space folder for the Gradio demo, and optionally push it.

    epg space OUTPUT_DIR                                   # the shipped digits pipelines, CPU hardware
    epg space OUTPUT_DIR --model org/EPG-XL16-imagenet256 --consistency-model org/EPG-L16-onestep \\
        --hardware zero-a10g --push-to-hub org/epg-demo

The folder holds ``app.py`` (the demo, ``pipelines/space/app.py`` of the repository), ``README.md`` (the Space's
front matter, the demo's description and hardware notes), ``requirements.txt`` (registry packages only),
``epg_diffusers/`` (this package's source, vendored, since no registry has it) and ``space.json`` (which models to
serve). A pipeline given as a folder is copied into ``models/``; a Hub repo id is downloaded by the Space at build
time (``preload_from_hub``). Gradio itself comes from the front matter's ``sdk_version``.
"""

import argparse
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

from .defaults import CONSISTENCY_PIPELINE, DIFFUSION_PIPELINE, default_pipeline, shipped_dir
from .hub import NEVER_UPLOAD

PACKAGE = "epg-diffusers"
NOT_NEEDED_BY_THE_APP = {"datasets"}  # core requirements that only training and preprocessing use
EXTRA_REQUIREMENTS = ["spaces"]  # ZeroGPU's decorator (the app runs without it elsewhere)
HARDWARE = {  # suggested_hardware -> the note in the Space's README
    "cpu-basic": "the free CPU: enough for the small digits pipelines (a guided 74-evaluation batch of 4 in ~1 s)",
    "cpu-upgrade": "8 CPU cores: small models only",
    "zero-a10g": "ZeroGPU: a GPU is attached while `generate` runs (`@spaces.GPU`); for ImageNet-size models",
    "t4-small": "a T4 (16 GB): ImageNet models in bf16",
    "a10g-small": "an A10G (24 GB): ImageNet models, larger batches",
    "a100-large": "an A100 (80 GB): the largest models (EPG-G/16) at full batch",
}
IGNORE = ["__pycache__", "*.pyc", "shipped"]  # not vendored: byte code, and the shipped pipelines (copied to models/)


def _requirements() -> list[str]:
    """The package's core requirements that the app needs, plus the Space's own; registries only."""
    core = [Requirement(r) for r in importlib.metadata.requires(PACKAGE) or []]
    needed = [str(r) for r in core if r.marker is None and r.name not in NOT_NEEDED_BY_THE_APP]
    return needed + EXTRA_REQUIREMENTS


def _gradio_version() -> str:
    """The gradio pin of the ``demo`` extra: the Space's ``sdk_version``."""
    for text in importlib.metadata.requires(PACKAGE) or []:
        requirement = Requirement(text)
        if requirement.name == "gradio" and requirement.marker and requirement.marker.evaluate({"extra": "demo"}):
            return next(iter(requirement.specifier)).version
    raise ValueError(f"{PACKAGE}'s `demo` extra pins no gradio version.")


def _model(value: str | None, default: str, argument: str) -> tuple[str, str | None]:
    """(a pipeline folder, None) or (a Hub repo id, the repo id) for one model, checked before anything is written."""
    source = value or default_pipeline(default, argument)
    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "model_index.json")):
            raise ValueError(f"`{argument}`={source!r} is a folder without model_index.json, not a saved pipeline.")
        return source, None
    if source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ValueError(f"`{argument}`={source!r} is neither a pipeline folder nor a Hub repo id (org/name).")
    return source, source


def _readme(models: dict[str, str], preload: list[str], hardware: str) -> str:
    body = (shipped_dir() / "space" / "README.md").read_text(encoding="utf-8")
    front = [
        "---", "title: EPG Pixel-Space Generation", "emoji: 🎨", "colorFrom: indigo", "colorTo: pink", "sdk: gradio",
        f"sdk_version: {_gradio_version()}", "app_file: app.py", 'python_version: "3.11"', "pinned: false",
        "license: apache-2.0", "short_description: Class-conditional image generation without a VAE (EPG)",
        "tags:", *(f"  - {tag}" for tag in ("epg", "epg-diffusers", "pixel-space", "image-generation")),
        f"suggested_hardware: {hardware}",
    ]
    if preload:
        front += ["models:", *(f"  - {m}" for m in preload), "preload_from_hub:", *(f"  - {m}" for m in preload)]
    rows = "\n".join(f"| {kind} | `{name}` |" for kind, name in models.items())
    notes = "\n".join(f"- `{name}`: {note}" for name, note in HARDWARE.items())
    return (
        "\n".join(front + ["---", "", ""]) + body.rstrip() + "\n\n## This Space\n\n"
        "Built with `epg space`: `epg_diffusers/` is the package's source (no registry has it), "
        "`requirements.txt` installs the rest from PyPI, and `space.json` names the models:\n\n"
        f"| model | folder or Hub repo |\n| --- | --- |\n{rows}\n\n"
        f"Suggested hardware: `{hardware}`. Options (Settings → Hardware):\n\n{notes}\n"
    )


def build_space(
    output_dir: str | os.PathLike,
    model: str | None = None,
    consistency_model: str | None = None,
    hardware: str = "cpu-basic",
    overwrite: bool = False,
    autoguidance_model: str | None = None,
) -> Path:
    """Write the Space folder (see the module docstring) and return it.

    Args:
        output_dir: the folder to write (must be missing or empty unless ``overwrite``).
        model, consistency_model: pipeline folders or Hub repo ids (default: the shipped digits pipelines).
        autoguidance_model: a weaker pipeline of the diffusion model's data (folder or repo id): the demo then
            offers autoguidance.
        hardware: the front matter's ``suggested_hardware`` (one of ``HARDWARE``).
        overwrite: replace a non-empty ``output_dir``.
    """
    output = Path(output_dir)
    if hardware not in HARDWARE:
        raise ValueError(f"`hardware` must be one of {tuple(HARDWARE)}, got {hardware!r}.")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ValueError(f"`output_dir`={str(output)!r} exists and is not empty; pass --overwrite to replace it.")
    sources = {"diffusion": _model(model, DIFFUSION_PIPELINE, "model"),
               "consistency": _model(consistency_model, CONSISTENCY_PIPELINE, "consistency_model")}
    if autoguidance_model is not None:
        sources["weak"] = _model(autoguidance_model, None, "autoguidance_model")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:  # moved in when complete
        building = Path(tmp) / "space"
        models, preload = {}, []
        for kind, (source, repo_id) in sources.items():
            if repo_id is None:  # a folder: copied, without training leftovers
                shutil.copytree(source, building / "models" / kind,
                                ignore=shutil.ignore_patterns(*NEVER_UPLOAD, *IGNORE))
            models[kind] = repo_id or f"models/{kind}"
            preload += [repo_id] if repo_id else []
        package = Path(__file__).resolve().parent
        shutil.copytree(package, building / package.name, ignore=shutil.ignore_patterns(*IGNORE))
        shutil.copyfile(shipped_dir() / "space" / "app.py", building / "app.py")
        (building / "space.json").write_text(json.dumps(models, indent=2) + "\n")
        (building / "requirements.txt").write_text(
            "# Registry packages only: epg-diffusers is vendored in epg_diffusers/; gradio comes from sdk_version.\n"
            + "\n".join(_requirements()) + "\n")
        (building / "README.md").write_text(_readme(models, preload, hardware), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        building.rename(output)
    return output


def push_space(folder: str | os.PathLike, repo_id: str, private: bool | None = None, token: str | None = None):
    """Create (if needed) the Gradio Space ``repo_id`` and upload ``folder`` to it."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo.repo_id, folder_path=folder, repo_type="space",
                             commit_message="Upload the EPG demo (epg space)", ignore_patterns=IGNORE[:2])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``epg space``."""
    parser.add_argument("output_dir", help="the Space folder to write")
    parser.add_argument("--model", default=None,
                        help=f"diffusion pipeline folder or Hub repo id (default: the shipped {DIFFUSION_PIPELINE})")
    parser.add_argument("--consistency-model", default=None,
                        help=f"consistency pipeline folder or Hub repo id (default: the shipped {CONSISTENCY_PIPELINE})")
    parser.add_argument("--autoguidance-model", default=None,
                        help="a weaker pipeline folder or Hub repo id: the demo then offers autoguidance")
    parser.add_argument("--hardware", choices=tuple(HARDWARE), default="cpu-basic", help="suggested hardware")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload the folder as this Space (org/name)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the Space private")


def run(args: argparse.Namespace) -> int:
    """Write the Space folder and optionally push it."""
    folder = build_space(args.output_dir, args.model, args.consistency_model, args.hardware, args.overwrite,
                         args.autoguidance_model)
    print(f"wrote {folder}: run it with `pip install -r {folder}/requirements.txt gradio=={_gradio_version()}` "
          f"and `python {folder}/app.py`")
    if args.push_to_hub:
        info = push_space(folder, args.push_to_hub, private=args.private or None)
        print(f"pushed to {getattr(info, 'commit_url', args.push_to_hub)}")
    return 0
