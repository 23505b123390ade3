"""``epg sample``: N images from an EPG pipeline over every process, for evaluation at scale.

    epg sample org/EPG-XL16-imagenet256 --output-dir samples --num-samples 50000 --guidance-scale 2.5
    epg sample --output-dir samples/digits --num-samples 1000    # the shipped digits pipeline (epg_diffusers.defaults)
    accelerate launch --num_processes 8 -m epg_diffusers.cli sample ...    # the same images on 8 processes

Image ``i`` (0 <= i < N) starts from the noise of ``torch.Generator("cpu").manual_seed(seed + i)`` and has class
``labels[i]`` (balanced: N / num_classes per class, the paper's protocol; or random), so the set does not
depend on the batch size or the number of processes (the noise is drawn on CPU, so it is also the same on any
device; the network's arithmetic may differ slightly between devices). Each finished batch is committed as a part
file (``parts/part-<first index>.npz``, renamed into place when complete); a restarted run skips the indices
already committed, so it resumes without duplicates or gaps. When every index is done, the parts become
``samples.npz`` (ADM's format: ``arr_0`` uint8 N x H x W x 3, ``arr_1`` labels) and/or ``images/<index>.png``.
``settings.json`` records the sampler, steps, network evaluations, guidance, interval, seeds and model.
"""

import argparse
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from tqdm.auto import tqdm

from ..cli import finite_float, non_negative_int, positive_int, sigma_float
from ..defaults import (
    DIFFUSION_PIPELINE,
    DTYPES,
    add_sampling_arguments,
    configure_sampling,
    default_pipeline,
    load_pipeline,
)
from ..pipelines import NonFiniteSampleError
from ..version import __version__
from .labels import LABEL_MODES, sample_labels
from .npz import write_images_npz

logger = logging.getLogger(__name__)
SAVE_MODES = ("npz", "png", "both")
SAMPLES_NPZ, SETTINGS_JSON, PARTS, PNG_DIR = "samples.npz", "settings.json", "parts", "images"
# settings that may change between a run and its resumption: they do not change any image
RUN_ONLY = ("batch_size", "num_processes", "compile", "command", "status", "versions")


def resolved_settings(pipe, num_samples: int, labels: str, seed: int, num_inference_steps, guidance_scale,
                      guidance_interval, save: str, autoguidance_scale=None) -> dict:
    """Every setting that determines the images, with the pipeline's defaults filled in."""
    if save not in SAVE_MODES:
        raise ValueError(f"`save` must be one of {SAVE_MODES}, got {save!r}.")
    config = pipe.config
    steps = pipe.scheduler.resolve_steps(num_inference_steps, config.default_num_inference_steps)
    scale, autoguidance_scale, guide = pipe.resolve_guidance(guidance_scale, autoguidance_scale, None)
    interval = config.default_guidance_interval if guidance_interval is None else [float(v) for v in guidance_interval]
    pipe.check_inputs(steps, scale, interval, "pt", None)
    pipe.scheduler.set_timesteps(steps)
    evaluations = pipe.scheduler.network_evaluations(scale, interval, autoguidance=guide is not None)
    sample_labels(labels, num_samples, pipe.transformer.config.num_classes, seed)  # validates N and the mode
    return {
        "num_samples": num_samples, "labels": labels, "num_classes": pipe.transformer.config.num_classes,
        "seed": seed, "seeds": "image i starts from torch.Generator('cpu').manual_seed(seed + i)",
        "sampler": type(pipe.scheduler).__name__, "scheduler_config": public_config(pipe.scheduler.config),
        "num_inference_steps": steps, "num_network_evaluations": evaluations, "guidance_scale": float(scale),
        "guidance_interval": interval, "autoguidance_scale": autoguidance_scale, "resolution": pipe.transformer.config.sample_size,
        "dtype": str(pipe.transformer.dtype).removeprefix("torch."), "save": save,
    }


def public_config(config: dict) -> dict:
    """A config without diffusers' bookkeeping entries (``_use_default_values`` lists names in set order, which
    differs between processes, so two processes of one run would disagree about their settings)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def prepare_output(output_dir: str, settings: dict, is_main: bool) -> bool:
    """Check ``output_dir`` is writable and holds no run with other settings; True when that run is complete."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir):
            pass
    except OSError as error:
        raise ValueError(f"`output_dir`={output_dir!r} is not writable: {error}") from error
    path = Path(output_dir, SETTINGS_JSON)
    if path.is_file():
        previous = json.loads(path.read_text())
        if isinstance(previous.get("scheduler_config"), dict):  # runs of earlier versions stored the bookkeeping
            previous["scheduler_config"] = public_config(previous["scheduler_config"])
        changed = {k: (previous.get(k), v) for k, v in settings.items() if k not in RUN_ONLY and previous.get(k) != v
                   and (k in previous or v not in (None, 0))}  # a setting added since that run, left at "off"
        if changed:
            details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(f"`output_dir`={output_dir!r} holds a run with other settings ({details}); "
                             "resume with the same settings or choose another output directory.")
        if previous.get("status") == "complete":
            return True
    os.makedirs(os.path.join(output_dir, PARTS), exist_ok=True)
    if is_main:
        write_json(path, {**settings, "status": "running"})
    return False


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def part_files(output_dir: str) -> list[Path]:
    """Committed part files (``parts/part-<first index>.npz``), in file-name order."""
    return sorted(Path(output_dir, PARTS).glob("part-*.npz"))


def set_aside_corrupt_parts(output_dir: str) -> list[str]:
    """Rename every part file that does not read back whole to ``<name>.corrupt`` (its images are sampled again)."""
    moved = []
    for path in part_files(output_dir):
        try:
            with np.load(path) as part:
                indices, images = part["indices"], part["images"]  # reading checks the zip members' CRC
            if indices.ndim != 1 or images.ndim != 4 or len(images) not in (0, len(indices)):
                raise ValueError(f"indices {indices.shape} and images {images.shape} do not match")
        except Exception as error:  # truncated, not a zip, missing arrays: whatever it is, it is not usable
            os.replace(path, path.with_name(f"{path.name}.corrupt"))
            logger.warning("%s is corrupt (%s: %s); moved to %s.corrupt, its images are sampled again",
                           path, type(error).__name__, error, path.name)
            moved.append(path.name)
    return moved


def done_indices(output_dir: str) -> set[int]:
    """Image indices already committed in part files."""
    done = set()
    for path in part_files(output_dir):
        with np.load(path) as part:
            done.update(part["indices"].tolist())
    return done


def sample_batch(pipe, indices: np.ndarray, labels: np.ndarray, settings: dict) -> tuple[np.ndarray, int]:
    """uint8 (B, H, W, 3) images of the given global indices, and the network evaluations the pipeline used."""
    generators = [torch.Generator("cpu").manual_seed(settings["seed"] + int(i)) for i in indices]
    try:
        out = pipe(
            class_labels=labels[indices].tolist(), num_inference_steps=settings["num_inference_steps"],
            guidance_scale=settings["guidance_scale"], guidance_interval=settings["guidance_interval"],
            autoguidance_scale=settings["autoguidance_scale"], generator=generators, output_type="pt",
        )
    except NonFiniteSampleError as error:
        seeds = [settings["seed"] + int(i) for i in indices]
        raise NonFiniteSampleError(f"images {indices.tolist()} (seeds {seeds}) came out non-finite; nothing of this "
                                   f"batch was written, committed batches are kept ({error})") from error
    images = (out.images.float() * 255 + 0.5).clamp(0, 255).to(torch.uint8)  # round half up, as save_image does
    return images.permute(0, 2, 3, 1).cpu().numpy(), out.num_network_evaluations


def save_batch(output_dir: str, indices: np.ndarray, images: np.ndarray, save: str, digits: int) -> None:
    """Write the PNGs (if asked), then commit the part file last: a part exists only for finished images."""
    if save in ("png", "both"):
        import PIL.Image

        for index, image in zip(indices, images):
            PIL.Image.fromarray(image).save(Path(output_dir, PNG_DIR, f"{int(index):0{digits}d}.png"))
    path = Path(output_dir, PARTS, f"part-{int(indices[0]):09d}.npz")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, indices=indices, images=images if save != "png" else images[:0])
        f.flush()
        os.fsync(f.fileno())  # on disk before the name says it is committed
    os.replace(tmp, path)


def assemble(output_dir: str, settings: dict, labels: np.ndarray) -> None:
    """Check that the parts cover every index exactly once, write ``samples.npz`` in index order, remove parts."""
    n = settings["num_samples"]
    owner = np.full(n, -1)
    parts = part_files(output_dir)
    for p, path in enumerate(parts):
        with np.load(path) as part:
            indices = part["indices"]
        owner[indices[owner[indices] < 0]] = p  # an index committed twice (never expected) is taken once
    missing = np.flatnonzero(owner < 0)
    if len(missing):
        raise RuntimeError(f"{len(missing)} images are missing from {output_dir!r} (first: {missing[:5].tolist()}).")
    if settings["save"] != "png":
        size = settings["resolution"]
        write_images_npz(os.path.join(output_dir, SAMPLES_NPZ), (n, size, size, 3), _in_order(parts, owner), labels)
    shutil.rmtree(os.path.join(output_dir, PARTS))  # with any half-written part a killed run left behind


def _in_order(parts: list[Path], owner: np.ndarray, chunk: int = 1024):
    """Images in index order, loading each part once and dropping it when no later index needs it."""
    cache, last_use = {}, {p: int(np.flatnonzero(owner == p).max()) for p in np.unique(owner)}
    for start in range(0, len(owner), chunk):
        rows = []
        for index in range(start, min(start + chunk, len(owner))):
            p = int(owner[index])
            if p not in cache:
                with np.load(parts[p]) as part:
                    cache[p] = dict(zip(part["indices"].tolist(), part["images"]))
            rows.append(cache[p][index])
            if last_use[p] == index:
                del cache[p]
        yield np.stack(rows)


def sample_images(
    pipe,
    output_dir: str,
    num_samples: int,
    *,
    labels: str = "balanced",
    seed: int = 0,
    batch_size: int = 64,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    save: str = "npz",
    autoguidance_scale: float | None = None,
    state=None,
    extra_settings: dict | None = None,
) -> dict:
    """Sample ``num_samples`` images into ``output_dir``, sharing the work among the processes of ``state``.

    Args:
        pipe ([`EPGPipeline`]): the pipeline, already on its device.
        output_dir: where ``settings.json``, ``samples.npz`` and/or ``images/`` go; a run there is resumed.
        num_samples: N, the size of the set.
        labels: ``"balanced"`` (N must be a multiple of the class count) or ``"random"`` (seeded by ``seed``).
        seed: image ``i`` starts from ``torch.Generator("cpu").manual_seed(seed + i)``.
        batch_size: images per forward on each process (does not change the images).
        num_inference_steps, guidance_scale, guidance_interval: as in the pipeline (None: its defaults).
        save: ``"npz"``, ``"png"`` or ``"both"``.
        autoguidance_scale: as in the pipeline (its ``guidance_transformer`` is the weaker model).
        state (`accelerate.PartialState`, *optional*): the processes; default: this process's.
        extra_settings: more entries for ``settings.json`` (model, command, ...).

    Returns:
        `dict`: the settings written to ``settings.json`` (``status`` is ``"complete"``).
    """
    from accelerate import PartialState

    state = state or PartialState(cpu=not torch.accelerator.is_available())
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"`num_samples`={num_samples} and `batch_size`={batch_size} must be >= 1.")
    settings = resolved_settings(pipe, num_samples, labels, seed, num_inference_steps, guidance_scale,
                                 guidance_interval, save, autoguidance_scale)
    settings.update(extra_settings or {})
    versions = {"epg_diffusers": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
    settings.update(batch_size=batch_size, num_processes=state.num_processes, versions=versions)
    settings = json.loads(json.dumps(settings, default=str))  # as stored, so a resumed run compares like with like
    if prepare_output(output_dir, settings, state.is_main_process):
        return json.loads(Path(output_dir, SETTINGS_JSON).read_text())
    if save != "npz":
        os.makedirs(os.path.join(output_dir, PNG_DIR), exist_ok=True)
    class_labels = sample_labels(labels, num_samples, settings["num_classes"], seed)
    if state.is_main_process:
        set_aside_corrupt_parts(output_dir)
    state.wait_for_everyone()
    remaining = np.setdiff1d(np.arange(num_samples), np.fromiter(done_indices(output_dir), dtype=np.int64))
    state.wait_for_everyone()  # everyone has listed the parts before anyone writes new ones
    run_batches(pipe, output_dir, remaining, class_labels, settings, state)
    state.wait_for_everyone()
    if state.is_main_process:
        assemble(output_dir, settings, class_labels)
        settings["status"] = "complete"
        write_json(Path(output_dir, SETTINGS_JSON), settings)
    state.wait_for_everyone()
    return {**settings, "status": "complete"}


def run_batches(pipe, output_dir: str, remaining: np.ndarray, labels: np.ndarray, settings: dict, state) -> None:
    """Global step g covers ``remaining[g*B*P : (g+1)*B*P]``; process r samples its r-th slice of B."""
    per_step = settings["batch_size"] * state.num_processes
    digits = max(6, len(str(settings["num_samples"] - 1)))
    done = settings["num_samples"] - len(remaining)
    start, sampled = time.perf_counter(), 0
    with tqdm(total=settings["num_samples"], initial=done, unit="img", disable=not state.is_main_process) as progress:
        for offset in range(0, len(remaining), per_step):
            chunk = remaining[offset : offset + per_step]
            mine = chunk[state.process_index * settings["batch_size"] :][: settings["batch_size"]]
            if len(mine):
                images, evaluations = sample_batch(pipe, mine, labels, settings)
                if evaluations != settings["num_network_evaluations"]:
                    raise RuntimeError(f"the pipeline used {evaluations} network evaluations per image, "
                                       f"expected {settings['num_network_evaluations']}.")
                save_batch(output_dir, mine, images, settings["save"], digits)
                sampled += len(mine)
            progress.update(len(chunk))
            progress.set_postfix(img_s_per_process=f"{sampled / (time.perf_counter() - start):.2f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``epg sample``."""
    parser.add_argument("pipeline", nargs="?", default=None,
                        help="a saved EPG pipeline folder or a Hub repo id (org/name); default: the shipped "
                             f"digits diffusion pipeline, pipelines/{DIFFUSION_PIPELINE} of a repository checkout")
    parser.add_argument("--output-dir", required=True, help="settings.json, samples.npz and/or images/ go here")
    parser.add_argument("--num-samples", type=positive_int, default=50000, help="N, the size of the set")
    parser.add_argument("--labels", choices=LABEL_MODES, default="balanced",
                        help="balanced: N / num_classes per class (N must be a multiple); random: seeded uniform")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="image i uses seed + i")
    parser.add_argument("--num-inference-steps", type=positive_int, default=None, help="default: the pipeline's")
    parser.add_argument("--guidance-scale", type=finite_float, default=None, help="default: the pipeline's (1 = off)")
    parser.add_argument("--guidance-interval", type=sigma_float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="unshifted sigma interval (LOW, HIGH] of guidance; `0 inf` guides every step")
    add_sampling_arguments(parser)
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward and process")
    parser.add_argument("--save", choices=SAVE_MODES, default="npz", help="samples.npz, PNGs or both")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model weights (the paper: fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer's repeated blocks")
    parser.add_argument("--revision", default=None, help="Hub revision of the pipeline")


def command_line(args: argparse.Namespace) -> str:
    """The ``epg sample`` command that reproduces ``args`` (any process count gives the same images)."""
    parts = ["epg", "sample", args.pipeline]
    for key, value in sorted(vars(args).items()):
        flag = f"--{key.replace('_', '-')}"
        if key == "pipeline" or value is None or value is False:
            continue
        parts += [flag] if value is True else [flag, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Load the pipeline and sample (see the module docstring)."""
    from accelerate import PartialState

    args.pipeline = args.pipeline or default_pipeline()  # recorded in settings.json as the model actually used
    state = PartialState(cpu=not torch.accelerator.is_available())
    pipe = load_pipeline(args.pipeline, args.dtype, args.revision).to(state.device)
    steps = configure_sampling(pipe, args)
    if args.compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    start = time.perf_counter()
    settings = sample_images(
        pipe, args.output_dir, args.num_samples, labels=args.labels, seed=args.seed, batch_size=args.batch_size,
        num_inference_steps=steps, guidance_scale=args.guidance_scale, guidance_interval=args.guidance_interval,
        save=args.save, autoguidance_scale=args.autoguidance_scale, state=state,
        extra_settings={"model": args.pipeline, "revision": args.revision, "compile": args.compile,
                        "autoguidance_model": args.autoguidance_model, "command": command_line(args)},
    )
    if state.is_main_process:
        print(f"{settings['num_samples']} images in {args.output_dir} ({settings['num_network_evaluations']} network "
              f"evaluations per image, {time.perf_counter() - start:.1f} s)")
    state.destroy_process_group()  # a process group left to interpreter exit can abort in gloo's threads
    return 0
