"""The Hugging Face Hub: resolving repo ids to local snapshots, and pushing saved folders (``epg push``).

:meth:`EPGPipeline.from_pretrained` turns a repo id into a local snapshot with :func:`snapshot_path` and loads this
package's classes from it (diffusers' own download would pick the repo's generated code, which needs
``trust_remote_code=True``). Pushing uploads an explicit list of files (the pipeline or model layout, the generated
code, safetensors only) and never optimizer states, accelerate checkpoints or logs; a missing model card is
written with :mod:`epg_diffusers.model_card`.
"""

import argparse
import glob
import json
import os
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, is_offline_mode, snapshot_download

from .model_card import model_card, retarget
from .remote_code import has_remote_code, write_remote_code
from .version import __version__

# Never uploaded nor downloaded, whatever else a folder or repo holds (training output, resume state, logs).
NEVER_UPLOAD = [
    "*checkpoint-*", "*checkpoints/*", "*logs/*", "*optimizer*", "*random_states*", "*scaler.pt", "*.ckpt",
    "*.ckpt/*", "*.pth", "*.pt", "*.bin", "*.pkl", "*.pickle", "*events.out.tfevents*", "*.cache/*",
]
_COMPONENT_FILES = ["config.json", "scheduler_config.json", "*.safetensors", "*.safetensors.index*.json"]
_ROOT_FILES = ["README.md", "*.png", "*.jpg", "*.jpeg", "*.webp"]
_VARIANT_WEIGHTS = "*/*.*.safetensors"  # diffusion_pytorch_model.<variant>[-0000k-of-0000n].safetensors


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
    """The files of a pipeline folder (``model_index.json``) or model folder (``config.json``) that get pushed.

    A pipeline's generated code (``pipeline_epg.py`` and each component's module, as ``model_index.json`` names
    them) goes with it, so that diffusers alone can load the repo.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        entries = {k: v for k, v in index.items() if isinstance(v, list) and len(v) == 2
                   and all(isinstance(x, str) for x in v)}  # ["library or code module", "ClassName"]
        files = ["model_index.json"]
        for name, (module, _) in sorted(entries.items()):
            code = f"{module}.py" if name == "_class_name" else f"{name}/{module}.py"
            files += [code] if (folder / code).is_file() else []
            files += [] if name == "_class_name" else _component_files(folder, name)
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
    weights, the generated code, ``README.md`` and root images); optimizer states, ``checkpoint-*`` folders,
    pickles and logs never are. A pipeline folder without generated code (saved by an earlier version) gets it.
    The folder's ``README.md`` is written when missing (or when ``model_card_text`` is given) and an existing EPG
    card's usage snippets are pointed at ``repo_id``.

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
    if (folder / "model_index.json").is_file() and not has_remote_code(folder):
        write_remote_code(folder)  # a folder saved by an earlier version: add the code diffusers alone needs
    readme = folder / "README.md"
    if model_card_text is not None:
        readme.write_text(model_card_text)
    elif readme.is_file():
        readme.write_text(retarget(readme.read_text(), repo_id))
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
