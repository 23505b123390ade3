"""Infrastructure every training script shares: accelerator, checks, checkpoints, resume, logging, export."""

import json
import logging
import os
import re
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from .seeding import stream_seed
from .streaming import StreamingImages, as_is, full_steps

logger = get_logger("epg_diffusers.training")  # accelerate's: only the main process logs (unless told otherwise)
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "train_state.json"  # written last: the counters and every file's size; a checkpoint without it is partial
PAUSE_AT, PAUSE_FILE = "EPG_TEST_PAUSE_AT", "EPG_TEST_PAUSE_FILE"  # fault-injection tests only


def pause_for_fault_test(point: str, step: int) -> None:
    """Test hook: with ``EPG_TEST_PAUSE_AT=<point>@<step>`` the process writes its pid to ``EPG_TEST_PAUSE_FILE``
    and waits here, so that a test's SIGKILL lands at exactly this point (e.g. inside a checkpoint save)."""
    if os.environ.get(PAUSE_AT) == f"{point}@{step}":
        Path(os.environ[PAUSE_FILE]).write_text(str(os.getpid()))
        while True:
            time.sleep(1)


class TrainState:
    """Step and epoch counters (and the steps done in the current epoch), saved with every checkpoint."""

    def __init__(self):
        self.step, self.epoch, self.epoch_step = 0, 0, 0

    def state_dict(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step}

    def load_state_dict(self, state: dict):
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.epoch_step = int(state.get("epoch_step", 0))  # checkpoints of earlier versions: map-style data only


def add_common_arguments(parser, presets: dict):
    """Flags every training script has; recipe values (``--preset``) fill the ones left unset."""
    add = parser.add_argument
    add("--preset", required=True, help=f"recipe: {', '.join(presets)}")
    add("--dataset_name", default=None, help="Hub id, save_to_disk / imagefolder dir, or 'digits'")
    add("--dataset_split", default="train")
    add("--streaming", action="store_true",
        help="stream --dataset_name (a Hub data set, parquet / arrow shards, ...) instead of loading it whole; "
             "decoded and augmented on the fly, split among processes, resumed exactly")
    add("--shuffle_buffer_size", type=int, default=10_000, help="--streaming: examples in the shuffle buffer")
    add("--image_column", default="image")
    add("--label_column", default="label")
    add("--model_config", type=json.loads, default={}, help="JSON overrides of the model config")
    add("--output_dir", required=True)
    add("--train_batch_size", type=int,
        help="images per device per micro-step (diffusers' meaning): the global batch is this x processes x "
             "--gradient_accumulation_steps; replaces the recipe's --global_batch_size")
    add("--global_batch_size", type=int,
        help="images per optimisation step over all processes and accumulation steps (the paper's batch, what the "
             "recipes set); must divide by processes x accumulation. Give this or --train_batch_size, not both")
    add("--max_train_steps", type=int)
    add("--learning_rate", type=float)
    add("--lr_scheduler", default=None)
    add("--lr_warmup_steps", type=int)
    add("--adam_beta1", type=float)
    add("--adam_beta2", type=float)
    add("--weight_decay", type=float)
    add("--mixed_precision", choices=["no", "fp16", "bf16"])
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--gradient_checkpointing", action="store_true")
    add("--max_grad_norm", type=float, default=None, help="gradient clipping (off when unset)")
    add("--clip_after_step", type=int, default=None, help="clip only from this step on (e.g. after warmup)")
    add("--seed", type=int, default=0)
    add("--dataloader_num_workers", type=int, help="augmentation worker processes (recipes: 2; digits: 0)")
    add("--checkpointing_steps", type=int, default=5000)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    add("--max_steps_per_run", type=int, default=None,
        help="stop (after checkpointing) once this invocation has trained this many steps, e.g. to fit a cluster "
             "time limit; continue with --resume_from_checkpoint latest")
    add("--report_to", default="tensorboard",
        help="trackers, comma-separated (tensorboard, wandb, ...), 'all' (every one installed) or 'none'")
    add("--tracker_project_name", default=None,
        help="the trackers' project name (default: rcm for pre-training, epg for fine-tuning)")
    add("--log_every", type=int, default=10)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None)
    add("--dry_run", action="store_true", help="print the resolved configuration and exit")


def resolve_arguments(parser, argv, presets: dict):
    """Parse, then fill unset values from the recipe of ``--preset``."""
    from .recipes import get_recipe

    args = parser.parse_args(argv)
    if args.train_batch_size is not None and args.global_batch_size is not None:
        parser.error("give `--train_batch_size` (per device) or `--global_batch_size` (over all processes and "
                     "accumulation steps), not both")
    for key, value in get_recipe(args.preset, presets).items():
        if key == "global_batch_size" and args.train_batch_size is not None:
            continue  # a per-device batch from the command line replaces the recipe's global one
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.dataset_name is None:
        parser.error("`--dataset_name` is required for this preset")
    if args.seed < 0:
        parser.error(f"`--seed` must be >= 0, got {args.seed}")
    return args


def print_dry_run(args) -> None:
    """``--dry_run``: the resolved configuration, batches resolved for this launch (``WORLD_SIZE`` processes)."""
    resolve_batch(args, int(os.environ.get("WORLD_SIZE", 1)))
    print(json.dumps(vars(args), indent=2, sort_keys=True, default=str))


def train_loop(args, accelerator: Accelerator, model, optimizer, loader, data, state: TrainState, hooks) -> None:
    """Epochs, exact mid-epoch resume, gradient accumulation, checkpoints; the script supplies ``hooks``:

    ``hooks.loss(batch, micro_step) -> dict`` of per-sample terms with a ``"loss"`` entry (inside autocast),
    ``hooks.after_step()`` after each optimiser step (schedules, EMA), ``hooks.log(batch, logs)`` every
    ``log_every`` steps, and optionally ``hooks.every_step()`` (validation) after the step counter moves.
    """
    streaming = is_streaming(data)
    steps_per_epoch = None if streaming else len(loader) // args.gradient_accumulation_steps
    stop_at = min(args.max_train_steps, state.step + (args.max_steps_per_run or args.max_train_steps))
    logs = []
    progress = tqdm(total=args.max_train_steps, initial=state.step, desc="steps", dynamic_ncols=True,
                    disable=not accelerator.is_local_main_process)  # one bar, on the main process of each node
    while state.step < stop_at:
        if streaming:  # the epoch's stream, after the micro-batches a resumed run had trained on
            data.resume_epoch(state.epoch, state.epoch_step * args.gradient_accumulation_steps)
            batches = full_steps(loader, args.gradient_accumulation_steps, accelerator)
        else:
            data.set_epoch(state.epoch)
            loader.set_epoch(state.epoch)
            done = state.step - state.epoch * steps_per_epoch
            batches = accelerator.skip_first_batches(loader, done * args.gradient_accumulation_steps) if done else loader
        micro_step = 0  # index of the micro-batch within the current optimisation step
        for batch in batches:
            # dropout and any other global-RNG draw of this micro-step depend on (seed, step, process, micro-step)
            # only, so a resumed run draws exactly what the uninterrupted run drew
            torch.manual_seed(stream_seed(args.seed, "global_rng", step=state.step,
                                          process=accelerator.process_index, micro_step=micro_step))
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    terms = hooks.loss(batch, micro_step)
                accelerator.backward(terms["loss"].mean())
                if accelerator.sync_gradients and args.max_grad_norm and state.step >= (args.clip_after_step or 0):
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            labels = batch["label"]  # the images this process trained on in this micro-step, summed up to a global batch
            images = torch.tensor(float(len(labels) * args.gradient_accumulation_steps * accelerator.num_processes),
                                  device=labels.device)
            logs.append({k: v.detach().float().mean() for k, v in terms.items()}
                        | {"broken_images": batch["broken"].float(), "images_per_step": images})
            micro_step += 1
            if not accelerator.sync_gradients:
                continue
            micro_step = 0
            if not accelerator.optimizer_step_was_skipped:
                hooks.after_step()
            state.step += 1
            state.epoch_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{terms['loss'].detach().float().mean().item():.4g}", refresh=False)
            if state.step % args.log_every == 0 or state.step == stop_at:
                hooks.log(batch, logs)
                logs = []
            getattr(hooks, "every_step", lambda: None)()
            if state.step % args.checkpointing_steps == 0 or state.step == stop_at:
                save_checkpoint(accelerator, args.output_dir, state, args.checkpoints_total_limit)
            if state.step >= stop_at:
                break
        else:
            if state.epoch_step == 0:
                raise ValueError(f"epoch {state.epoch} of the data set gave no complete step of "
                                 f"{args.global_batch_size} images: it is smaller than one global batch.")
            state.epoch, state.epoch_step = state.epoch + 1, 0
    progress.close()


def is_streaming(data) -> bool:
    return isinstance(data, StreamingImages)


def training_data(args, accelerator: Accelerator, views: dict, resolution: int):
    """(the data set to train on, the class names or None): map-style ``SeededImageDataset`` of the whole data set,
    or with ``--streaming`` this process's :class:`~epg_diffusers.training.streaming.StreamingImages`."""
    from .data import SeededImageDataset, load_image_dataset
    from .streaming import class_names, load_streaming_dataset

    columns = (args.dataset_name, args.dataset_split, args.image_column, args.label_column, resolution)
    if not args.streaming:
        dataset = load_image_dataset(*columns)
        return SeededImageDataset(dataset, views, args.seed), getattr(dataset.features["label"], "names", None)
    if args.shuffle_buffer_size < 1:
        raise ValueError(f"`shuffle_buffer_size` must be >= 1, got {args.shuffle_buffer_size}.")
    dataset = load_streaming_dataset(*columns)
    data = StreamingImages(dataset, views, args.seed, args.train_batch_size, accelerator.process_index,
                           accelerator.num_processes, args.shuffle_buffer_size)
    return data, class_names(dataset)


def mean_logs(accelerator: Accelerator, logs: list[dict]) -> dict[str, float]:
    """Average logged terms over the log period and all processes."""
    return {k: accelerator.gather(torch.stack([row[k] for row in logs]).mean()[None]).mean().item() for k in logs[0]}


def make_accelerator(args) -> Accelerator:
    """An Accelerator writing under ``args.output_dir``; checks the batch split before anything runs."""
    accelerator = Accelerator(
        # on a machine without an accelerator, torchrun's processes must form a gloo (MULTI_CPU) group rather
        # than run as independent copies, so CPU is requested explicitly
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers(args.report_to),
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )
    resolve_batch(args, accelerator.num_processes)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.is_main_process:
        logger.info("batch: %d per device x %d accumulation steps x %d processes = %d images per step",
                    args.train_batch_size, args.gradient_accumulation_steps, args.num_processes, args.global_batch_size)
    set_seed(args.seed, device_specific=False)
    if os.environ.get(PAUSE_AT):  # fault-injection tests: a pause inside accelerate's save_state, its folder made
        accelerator.register_save_state_pre_hook(lambda models, weights, folder: pause_for_fault_test(
            "save-state", int(re.search(r"checkpoint-(\d+)", Path(folder).name).group(1))))
    return accelerator


def trackers(report_to: str) -> list[str] | None:
    """``--report_to`` as accelerate's ``log_with``: None for 'none', else the comma-separated names."""
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    if not names:
        raise ValueError(f"`report_to` names no tracker: {report_to!r} (give e.g. tensorboard, wandb or none).")
    return None if names == ["none"] else names


def log_images(accelerator: Accelerator, key: str, image, step: int) -> None:
    """Send ``image`` (a PIL image, e.g. a validation grid) to every configured tracker that takes images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({key: np.asarray(image)[None]}, step=step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({key: [image]}, step=step)
        elif tracker.name not in _NO_IMAGES:
            _NO_IMAGES.add(tracker.name)
            logger.warning("tracker %s takes no images: validation grids are saved as files only", tracker.name)


_NO_IMAGES: set[str] = set()


def resolve_batch(args, num_processes: int) -> None:
    """Fill in both batch sizes (per device x accumulation x processes = global) and ``num_processes``: from
    ``--train_batch_size`` (per device) when given, else from ``--global_batch_size``."""
    accumulation = args.gradient_accumulation_steps
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        raise ValueError(f"`gradient_accumulation_steps` must be an integer >= 1, got {accumulation!r}.")
    per_step = num_processes * accumulation
    if args.train_batch_size is not None:
        if args.train_batch_size < 1:
            raise ValueError(f"`train_batch_size` (per device) must be >= 1, got {args.train_batch_size}.")
        args.global_batch_size = args.train_batch_size * per_step
    elif args.global_batch_size is None or args.global_batch_size < 1:
        raise ValueError(f"`global_batch_size` must be >= 1, got {args.global_batch_size}.")
    elif args.global_batch_size % per_step:
        raise ValueError(
            f"`global_batch_size`={args.global_batch_size} is not divisible by processes x accumulation "
            f"= {num_processes} x {accumulation}; change one of them, or give a per-device `--train_batch_size`."
        )
    else:
        args.train_batch_size = args.global_batch_size // per_step
    args.num_processes = num_processes


def check_resumed_batch(args, resume_path) -> None:
    """A resumed run must keep its global batch (the data order and the step count depend on it)."""
    saved = Path(args.output_dir) / "run_config.json"
    if resume_path is None or not saved.is_file():
        return
    try:
        config = json.loads(saved.read_text())
    except ValueError:
        return  # an unreadable config is rewritten by this run; the checkpoint itself was validated
    # before per-device batches existed, `train_batch_size` was the global batch
    previous = config.get("global_batch_size", config.get("train_batch_size"))
    if isinstance(previous, int) and previous != args.global_batch_size:
        raise ValueError(
            f"resuming with a global batch of {args.global_batch_size} ({args.train_batch_size} per device x "
            f"{args.gradient_accumulation_steps} accumulation x {args.num_processes} processes), but this run trained "
            f"with {previous} ({saved}): pass `--global_batch_size {previous}`."
        )
    if args.streaming:  # the stream's order within an epoch depends on its layout (streaming.py, exact resume)
        layout = ("num_processes", "train_batch_size", "dataloader_num_workers", "shuffle_buffer_size", "streaming")
        changed = [f"{k} {config.get(k)} -> {getattr(args, k)}" for k in layout if config.get(k) != getattr(args, k)]
        if changed:
            logger.warning("resuming a streamed epoch with another layout (%s): the rest of this epoch is read in "
                           "another order, and some of its examples may be read twice or not at all; the next "
                           "epochs are complete", ", ".join(changed))


def make_loader(args, accelerator: Accelerator, data) -> torch.utils.data.DataLoader:
    """Shuffled, drop-last batches of ``train_batch_size`` (one process's micro-batch); broken images replaced."""
    from .data import collate_skipping_broken

    if is_streaming(data):  # batches come collated from the workers; the stream is this process's already
        workers = min(args.dataloader_num_workers, data.n_shards)
        if workers < args.dataloader_num_workers:
            logger.warning("streaming: %d DataLoader workers for %d shards per process (a worker reads whole shards)",
                           workers, data.n_shards)
        return torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, collate_fn=as_is,
                                           pin_memory=accelerator.device.type == "cuda")
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
        num_workers=args.dataloader_num_workers, collate_fn=collate_skipping_broken,
    )
    if len(loader) < accelerator.num_processes * args.gradient_accumulation_steps:
        raise ValueError(f"data set of {len(data)} images is smaller than one global batch of {args.global_batch_size}.")
    return loader


def prepare(accelerator: Accelerator, model, optimizer, loader):
    """``accelerator.prepare`` of the model, optimiser and (map-style) loader; a streaming loader stays as it is
    (its data set is split among the processes already, and ``train_loop`` moves its batches to the device)."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return (*accelerator.prepare(model, optimizer), loader)
    return accelerator.prepare(model, optimizer, loader)


def start_run(args, accelerator: Accelerator, resume_path, project: str) -> TrainState:
    """Restore a checkpoint (objects registered beforehand), save the run config and start the trackers."""
    check_resumed_batch(args, resume_path)
    state = TrainState()
    if resume_path is not None:
        load_checkpoint(accelerator, resume_path, state)
    if accelerator.is_main_process:
        if resume_path is not None:
            truncate_metrics(args.output_dir, state.step)
        write_run_config(args, args.output_dir)
        accelerator.init_trackers(args.tracker_project_name or project, config=tracker_config(args))
    return state


def checkpoints(output_dir: str) -> list[Path]:
    """Existing ``checkpoint-<step>`` folders, oldest first (complete or not: see :func:`checkpoint_problem`)."""
    folder = Path(output_dir) / "checkpoints"
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or None: its state file names every file and size it wrote."""
    marker = Path(path) / STATE_FILE
    if not marker.is_file():
        return f"it has no {STATE_FILE} (a save that did not finish)"
    try:
        info = json.loads(marker.read_text())
        step, _ = int(info["step"]), int(info["epoch"])
    except (ValueError, KeyError, TypeError) as error:
        return f"its {STATE_FILE} is unreadable ({type(error).__name__}: {error})"
    named = CHECKPOINT_PATTERN.match(Path(path).name)
    if named and int(named.group(1)) != step:
        return f"its {STATE_FILE} says step {step}"
    for name, size in info.get("files", {}).items():  # checkpoints of earlier versions list no files
        found = Path(path) / name
        if not found.is_file():
            return f"{name} is missing"
        if found.stat().st_size != size:
            return f"{name} has {found.stat().st_size} bytes where {size} were written"
    return None


def resolve_resume(resume: str | None, output_dir: str) -> Path | None:
    """The checkpoint to resume from: a path, ``"latest"`` (the newest complete one; None when there is none yet)
    or None. Incomplete checkpoints are skipped with a warning that says why; a named one must be complete."""
    if resume is None:
        return None
    if resume != "latest":
        problem = checkpoint_problem(Path(resume))
        if problem:
            raise ValueError(f"`resume_from_checkpoint`={resume!r} is not a complete checkpoint folder: {problem}.")
        return Path(resume)
    found = checkpoints(output_dir)
    for path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("`resume_from_checkpoint` latest: skipping %s: %s", path, problem)
    if found:
        raise ValueError(f"`resume_from_checkpoint`='latest': none of the {len(found)} checkpoints in "
                         f"{str(Path(output_dir) / 'checkpoints')!r} is complete (see the warnings above).")
    return None


def load_checkpoint(accelerator: Accelerator, path: Path, state: TrainState):
    """Restore models, optimiser, schedulers, RNG states and counters; any failure stops before training."""
    try:
        accelerator.load_state(str(path))
        state.load_state_dict(json.loads((path / STATE_FILE).read_text()))
    except Exception as error:
        raise ValueError(f"cannot resume from checkpoint {str(path)!r}: {error}") from error
    logger.info("resumed from %s at step %d", path, state.step)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, flush it to disk, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: TrainState, total_limit: int | None):
    """``save_state`` into ``checkpoints/.checkpoint-<step>.partial``, renamed to ``checkpoint-<step>`` when complete.

    The state file (counters and the size of every file) is written last, itself through a temporary file, and
    only then is the folder renamed into place: a crash at any moment leaves either the complete checkpoint or a
    partial folder that is never resumed from. Rotation keeps the ``total_limit`` newest complete checkpoints.
    """
    folder = Path(output_dir) / "checkpoints"
    final, partial = folder / f"checkpoint-{state.step}", folder / f".checkpoint-{state.step}.partial"
    if accelerator.is_main_process:
        for leftover in folder.glob(".checkpoint-*.partial"):  # saves a killed run did not finish
            shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its random states
    if accelerator.is_main_process:
        pause_for_fault_test("state-written", state.step)
        files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
        write_atomic(partial / STATE_FILE, json.dumps({**state.state_dict(), "files": files}, indent=1))
        pause_for_fault_test("marked", state.step)
        if final.exists():  # the same step saved again (a run resumed from an older checkpoint)
            replaced = folder / f".checkpoint-{state.step}.replaced"
            final.rename(replaced)
            partial.rename(final)
            shutil.rmtree(replaced)
        else:
            partial.rename(final)
        pause_for_fault_test("renamed", state.step)
        if total_limit is not None:
            complete = [p for p in checkpoints(output_dir) if checkpoint_problem(p) is None]
            for old in complete[: max(0, len(complete) - total_limit)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info("saved %s", final)


def truncate_metrics(output_dir: str, step: int) -> None:
    """Keep the ``metrics.jsonl`` records of steps up to ``step`` (a resumed run logs the later ones again), and
    drop a line a killed run left half written."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    write_atomic(path, "".join(f"{line}\n" for line in kept))


def tracker_config(args) -> dict:
    """Run configuration flattened to scalars, as trackers (tensorboard hparams) require."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}


def write_run_config(args, output_dir: str):
    """The resolved configuration of the run, saved next to its outputs."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "run_config.json"), "w") as f:
        json.dump(vars(args), f, indent=2, sort_keys=True, default=str)


def append_metrics(output_dir: str, step: int, metrics: dict):
    """Log a line and append it to ``metrics.jsonl`` (one JSON object per log step)."""
    line = json.dumps({"step": step, **metrics})
    logger.info(line)
    with open(os.path.join(output_dir, "metrics.jsonl"), "a") as f:
        f.write(line + "\n")


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Throughput:
    """Images per second per device between two log points."""

    def __init__(self):
        self.start, self.images = time.perf_counter(), 0

    def add(self, images: int):
        self.images += images

    def pop(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        self.start, self.images = now, 0
        return rate
