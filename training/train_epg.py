"""Stage 2: end-to-end fine-tuning of a pre-trained encoder + fresh decoder into a diffusion or consistency model.

    accelerate launch training/train_epg.py --preset EPG-XL/16 --encoder runs/rcm-b16/encoder \
        --dataset_name ILSVRC/imagenet-1k --output_dir runs/epg-xl16
    python training/train_epg.py --preset EPG-tiny/digits-diffusion --encoder runs/rcm-digits/encoder \
        --output_dir runs/epg-digits                                                  # CPU, offline

``--mode`` comes from the preset (diffusion: x-prediction + guided Heun; consistency: ECT with a perceptual
NT-Xent, one-step sampling). ``--encoder`` is a folder saved by train_rcm.py or a reference ``nnet.pth``;
``--from_scratch`` trains the same architecture from random weights (the paper's ablation);
``--init_from_pipeline`` starts from a trained pipeline's whole generator (ECT's initialisation of a consistency
model from a diffusion model).
"""

import argparse
import json
import os
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from diffusers.training_utils import EMAModel
from diffusers.utils import make_image_grid

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler, EPGPipeline, EPGTransformer2DModel
from epg_diffusers import sigmas as sm
from epg_diffusers.hub import push_to_hub
from epg_diffusers.model_card import hub_repo_id, model_card, training_section
from epg_diffusers.models import get_preset
from epg_diffusers.training import runner
from epg_diffusers.training.curricula import ect_stage
from epg_diffusers.training.data import clean_view
from epg_diffusers.training.ema import EMA_DIR, LEGACY_EMA, PickledEMA, ema_model, load_ema, save_ema
from epg_diffusers.training.finetune import load_encoder, load_pipeline_init, make_lr_scheduler, param_groups
from epg_diffusers.training.objectives import (
    LOSS_WEIGHTINGS,
    ConsistencyNoiseLevels,
    DiffusionNoiseLevels,
    consistency_loss,
    diffusion_loss,
)
from epg_diffusers.training.recipes import EPG_RECIPES
from epg_diffusers.training.seeding import stream_generator

logger = get_logger("epg_diffusers.training")  # accelerate's: the main process logs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runner.add_common_arguments(parser, EPG_RECIPES)
    add = parser.add_argument
    add("--mode", choices=["diffusion", "consistency"])
    add("--encoder", default=None, help="pre-trained encoder: train_rcm.py output folder or reference nnet.pth")
    add("--from_scratch", action="store_true", help="ablation: no pre-trained encoder (random initialisation)")
    add("--init_from_pipeline", default=None,
        help="start from a trained pipeline's generator (folder or Hub id), e.g. consistency fine-tuning from a "
             "diffusion pipeline (ECT's initialisation); the architecture is the pipeline's")
    add("--prediction_type", choices=["boundary_condition", "sample_boundary_condition"],
        help="consistency: D = c_skip x + c_out F (the paper), or x-prediction under the boundary condition "
             "(default with --init_from_pipeline of a diffusion pipeline, whose network predicts x0)")
    add("--perceptual_encoder", default=None, help="consistency: frozen encoder of the NT-Xent term (default --encoder)")
    add("--freeze_encoder", action="store_true", help="train the decoder only (paper Table 13)")
    add("--layer_decay", type=float, default=1.0, help="layer-wise lr decay of the encoder blocks (1 = off)")
    add("--ema_decay", type=float)
    add("--label_dropout", type=float, help="probability of the null class (classifier-free guidance)")
    add("--decoder_dropout", type=float)
    add("--random_flip", action=argparse.BooleanOptionalAction, default=None,
        help="horizontal flips of the training images (the paper: on; the digits recipes: off)")
    add("--p_mean", type=float)
    add("--p_std", type=float)
    add("--grid_size", type=int, help="diffusion: Karras grid the proposal sigmas snap to")
    add("--loss_weighting", choices=LOSS_WEIGHTINGS, help="'reference' (the paper): 1/(sigma_i - sigma_i+1) for "
        "diffusion, 1/(t - r) for consistency; 'uniform': 1 (tiny budgets, e.g. the digits defaults)")
    for name in ("ect_q", "ect_k", "ect_b", "huber_c", "aux_tau", "aux_weight"):
        add(f"--{name}", type=float)
    add("--ect_stage_length", type=int)
    add("--lr_step_milestones", type=json.loads, help="step schedule, e.g. [400000, 500000]")
    add("--lr_step_factors", type=json.loads, help="step schedule, e.g. [0.3, 0.08]")
    add("--validation_steps", type=int, default=1000, help="sample a fixed-seed labelled grid every N steps")
    add("--export_pipeline_every", type=int, default=None,
        help="write a loadable EMA pipeline folder into checkpoints whose step is a multiple of N "
             "(default: every checkpoint; 0: never)")
    add("--offload_ema", action="store_true", help="keep the EMA weights in CPU memory, moved to the device per update")
    add("--eval_every", type=int, default=0,
        help="every N steps sample --eval_num_samples images with the EMA weights on all processes (as epg sample) "
             "and log their metrics (as epg evaluate): small-data metrics on digits, FID etc. with --eval_ref_npz")
    add("--eval_num_samples", type=int, default=1000)
    add("--eval_batch_size", type=int, default=64, help="images per forward and process when evaluating")
    add("--eval_ref_npz", default=None, help="ADM reference batch for FID / sFID / IS / precision / recall")
    add("--eval_inception_weights", default=None,
        help="local Inception weights for --eval_ref_npz (default: the standard download)")
    add("--eval_keep_samples", action="store_true", help="keep each evaluation's samples.npz (default: metrics only)")
    add("--num_inference_steps", type=int, help="sampling default written to the exported pipeline")
    add("--guidance_scale", type=float, help="sampling default written to the exported pipeline")
    add("--guidance_interval", type=float, nargs=2, metavar=("LOW", "HIGH"),
        help="sampling default written to the exported pipeline: guide while LOW < unshifted sigma <= HIGH")
    args = runner.resolve_arguments(parser, argv, EPG_RECIPES)
    if args.export_pipeline_every is None:
        args.export_pipeline_every = args.checkpointing_steps
    for name in ("export_pipeline_every", "eval_every"):
        if getattr(args, name) < 0:
            parser.error(f"`--{name}` must be >= 0 (0: never), got {getattr(args, name)}")
    for name in ("eval_num_samples", "eval_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"`--{name}` must be >= 1, got {getattr(args, name)}")
    if args.eval_every and args.eval_ref_npz is None and args.dataset_name != "digits":
        parser.error("`--eval_every` needs `--eval_ref_npz` (an ADM reference batch) for FID; without one only the "
                     "digits data set has metrics")
    if args.eval_ref_npz is not None and not Path(args.eval_ref_npz).is_file():
        parser.error(f"`--eval_ref_npz` {args.eval_ref_npz!r} is not a file")
    starts = [args.encoder is not None, args.from_scratch, args.init_from_pipeline is not None]
    if sum(starts) != 1:
        parser.error("pass exactly one of `--encoder` (a pre-trained encoder), `--from_scratch` and "
                     "`--init_from_pipeline` (a trained pipeline)")
    if args.mode == "consistency" and args.encoder is None and args.perceptual_encoder is None and args.aux_weight:
        parser.error("consistency training needs `--perceptual_encoder` (the frozen network of the NT-Xent term) "
                     "without `--encoder`, unless `--aux_weight 0`")
    if args.prediction_type is not None and args.mode != "consistency":
        parser.error("`--prediction_type` is a consistency fine-tuning option (diffusion predicts x0: 'sample')")
    if args.freeze_encoder and args.encoder is None:
        parser.error("`--freeze_encoder` freezes the pre-trained `--encoder`; pass one")
    return args


def generator_config(args) -> dict:
    """The generator's config: the recipe's preset or dict, then ``--model_config`` and ``--decoder_dropout``."""
    base = get_preset(args.model)[1] if isinstance(args.model, str) else dict(args.model)
    return {**base, **args.model_config, "decoder_dropout": args.decoder_dropout}


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        runner.print_dry_run(args)
        return
    accelerator = runner.make_accelerator(args)
    if args.offload_ema and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("`--offload_ema` keeps whole EMA weights on the CPU; under FSDP the EMA is sharded across "
                         "the processes already: leave it out.")
    resume_path = runner.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    init = None
    if args.init_from_pipeline is not None:
        init, init_prediction = load_pipeline_init(args.init_from_pipeline)
        args.model = {k: v for k, v in init.config.items() if not k.startswith("_")}  # the pipeline's architecture
        if args.mode == "consistency" and args.prediction_type is None:
            args.prediction_type = "sample_boundary_condition" if init_prediction == "sample" else init_prediction
    if args.mode == "consistency" and args.prediction_type is None:
        args.prediction_type = "boundary_condition"
    config = generator_config(args)
    resolution = config["sample_size"]
    # the data, and its class names when the labels are a ClassLabel
    data, names = runner.training_data(args, accelerator, {"x0": clean_view(resolution, args.random_flip)}, resolution)
    model = EPGTransformer2DModel(**{**config, "num_classes": len(names) if names else config.get("num_classes", 1000)})
    perceptual = None
    if args.encoder is not None:
        perceptual = load_encoder(model, args.encoder, freeze=args.freeze_encoder)
    elif init is not None:
        if init.config.num_classes != model.config.num_classes:
            raise ValueError(f"`init_from_pipeline`={args.init_from_pipeline!r} has {init.config.num_classes} classes, "
                             f"the data set {model.config.num_classes}.")
        try:
            model.load_state_dict(init.state_dict())
        except RuntimeError as error:  # --model_config changed the pipeline's architecture
            raise ValueError(f"`init_from_pipeline`={args.init_from_pipeline!r} does not fit the generator built with "
                             f"`--model_config` {args.model_config}: {str(error).splitlines()[0]}") from error
        del init
    if args.mode == "consistency":
        if args.perceptual_encoder:
            perceptual = load_encoder(None, args.perceptual_encoder, reference_like=model)
        if perceptual is not None:
            perceptual.to(accelerator.device).eval().requires_grad_(False)  # frozen: no gradients accumulate
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(
        param_groups(model, args.learning_rate, args.weight_decay, args.layer_decay),
        betas=(args.adam_beta1, args.adam_beta2),
    )
    lr_scheduler = make_lr_scheduler(args, optimizer)
    loader = runner.make_loader(args, accelerator, data)
    model, optimizer, loader = runner.prepare(accelerator, model, optimizer, loader)
    # created from the prepared model: under FSDP each process keeps the EMA of its own shards (training/ema.py)
    ema = EMAModel(model.parameters(), decay=args.ema_decay, min_decay=args.ema_decay, foreach=True,  # constant decay
                   model_cls=EPGTransformer2DModel, model_config=accelerator.unwrap_model(model).config)
    ema_device = torch.device("cpu") if args.offload_ema else accelerator.device
    ema.to(ema_device)
    if args.offload_ema and accelerator.device.type == "cuda":
        ema.pin_memory()
    # the EMA is saved the diffusers way (checkpoint-<step>/ema, as EMAModel.save_pretrained writes it), not in a pickle
    legacy = resume_path is not None and Path(resume_path, LEGACY_EMA).is_file()
    accelerator.register_for_checkpointing(lr_scheduler, *([PickledEMA(ema, ema_device)] if legacy else []))
    accelerator.register_load_state_pre_hook(lambda models, folder: load_ema(ema, folder, ema_device))
    state = runner.start_run(args, accelerator, resume_path, "epg")
    hooks = FineTuneHooks(args, accelerator, model, ema, perceptual, lr_scheduler, state, names)
    accelerator.register_save_state_pre_hook(hooks.save_checkpoint_extras)
    runner.train_loop(args, accelerator, model, optimizer, loader, data, state, hooks)
    if state.step >= args.max_train_steps:
        export(args, accelerator, hooks, state)
    accelerator.end_training()


class FineTuneHooks:
    """One fine-tuning step (diffusion or consistency), EMA, validation grids and logging."""

    def __init__(self, args, accelerator, model, ema, perceptual, lr_scheduler, state, names):
        self.args, self.accelerator, self.model, self.ema, self.perceptual = args, accelerator, model, ema, perceptual
        self.lr_scheduler, self.state, self.names = lr_scheduler, state, names
        self.config = accelerator.unwrap_model(model).config
        self.shift = sm.resolution_shift(self.config.sample_size)
        if args.mode == "diffusion":
            self.noise_levels = DiffusionNoiseLevels(args.p_mean, args.p_std, self.shift, args.grid_size,
                                                     args.loss_weighting)
        else:
            self.noise_levels = ConsistencyNoiseLevels(args.p_mean, args.p_std, self.shift, args.ect_q, args.ect_k,
                                                       args.ect_b, args.loss_weighting)
        self.throughput = runner.Throughput()

    def loss(self, batch, micro_step):
        args, device, x0 = self.args, self.accelerator.device, batch["x0"]
        rank = self.accelerator.process_index
        generator = stream_generator(args.seed, "noise", device, step=self.state.step, process=rank, micro_step=micro_step)
        if args.mode == "diffusion":  # noise levels first: the draws keep their order in the generator
            sigma, weight = self.noise_levels.sample(len(x0), generator, device)
        else:
            stage = ect_stage(self.state.step, args.ect_stage_length, args.ect_stage_length)
            t, r, weight = self.noise_levels.sample(len(x0), stage, generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        drop = torch.rand(len(x0), generator=generator, device=device) < args.label_dropout
        labels = torch.where(drop, self.config.num_classes, batch["label"])  # null class for guidance
        self.throughput.add(len(x0))
        if args.mode == "diffusion":
            return diffusion_loss(self.model, x0, labels, noise, sigma, weight)
        target = self.accelerator.unwrap_model(self.model)  # the stop-gradient target is the current online network
        return consistency_loss(self.model, target, self.perceptual, x0, labels, noise, t, r, weight,
                                sm.SIGMA_MIN * self.shift, args.huber_c, args.aux_tau, args.aux_weight,
                                self.accelerator.gather, rank * len(x0), args.prediction_type)

    def after_step(self):
        self.lr_scheduler.step()
        if self.args.offload_ema:  # diffusers' --offload_ema: the EMA visits the device for its update only
            self.ema.to(self.accelerator.device, non_blocking=True)
        self.ema.step(self.model.parameters())
        if self.args.offload_ema:
            self.ema.to("cpu", non_blocking=True)

    def log(self, batch, logs):
        metrics = {**runner.mean_logs(self.accelerator, logs), "lr": self.lr_scheduler.get_last_lr()[0],
                   "img_per_s_per_device": self.throughput.pop(),
                   "peak_memory_gb": runner.peak_memory_gb(self.accelerator.device)}
        self.accelerator.log(metrics, step=self.state.step)
        if self.accelerator.is_main_process:
            runner.append_metrics(self.args.output_dir, self.state.step, metrics)

    def every_step(self):
        if self.state.step % self.args.validation_steps == 0:
            self.validate()
        if self.args.eval_every and self.state.step % self.args.eval_every == 0:
            self.evaluate()

    def validate(self):
        """A labelled grid of the EMA pipeline, saved and sent to the trackers by the main process."""
        pipe = self.pipeline()  # on every process: gathering sharded (FSDP) weights is a collective
        if self.accelerator.is_main_process:
            grid = self.sample_grid(pipe)
            folder = Path(self.args.output_dir, "validation")
            folder.mkdir(parents=True, exist_ok=True)
            grid.save(folder / f"step-{self.state.step:07d}.png")
            runner.log_images(self.accelerator, "validation", grid, self.state.step)

    def evaluate(self):
        """``--eval_every``: ``epg sample`` of the EMA pipeline on every process, then ``epg evaluate`` of the set;
        the metrics go to the trackers, ``metrics.jsonl`` and ``eval/step-<step>/metrics.json``."""
        from accelerate import PartialState

        from epg_diffusers.evaluation.evaluate import evaluate_samples, evaluate_small_data
        from epg_diffusers.evaluation.inception import InceptionV3Features
        from epg_diffusers.evaluation.sample import SAMPLES_NPZ, sample_images

        args, step, accelerator = self.args, self.state.step, self.accelerator
        folder = Path(args.output_dir, "eval", f"step-{step:07d}")
        balanced = args.eval_num_samples % self.config.num_classes == 0
        sample_images(self.pipeline(), str(folder), args.eval_num_samples, labels="balanced" if balanced else "random",
                      batch_size=args.eval_batch_size, state=PartialState(), extra_settings={"training_step": step})
        if accelerator.is_main_process:
            samples = str(folder / SAMPLES_NPZ)
            if args.eval_ref_npz:
                extractor = InceptionV3Features(args.eval_inception_weights, device=accelerator.device)
                scores = evaluate_samples(samples, args.eval_ref_npz, extractor, args.eval_batch_size)
            else:
                scores = evaluate_small_data(samples, "digits", self.config.sample_size)
            metrics = {f"eval/{k}": v for k, v in scores.items() if isinstance(v, (int, float)) and v is not None}
            (folder / "metrics.json").write_text(json.dumps(scores, indent=1))
            if not args.eval_keep_samples:
                os.remove(samples)
            accelerator.log(metrics, step=step)
            runner.append_metrics(args.output_dir, step, metrics)
        accelerator.wait_for_everyone()

    def save_checkpoint_extras(self, models, weights, folder):
        """accelerate save-state hook: the EMA the diffusers way (``ema/``) and, when due, a loadable EMA pipeline
        (``pipeline/``); both land inside the checkpoint, so they are validated and rotated with it. Runs on every
        process (gathering sharded weights is a collective); the main process writes."""
        main = self.accelerator.is_main_process
        save_ema(self.ema, self.config, os.path.join(folder, EMA_DIR), main)
        every = self.args.export_pipeline_every
        if every and self.state.step % every == 0:
            pipe = self.pipeline()
            if main:
                write_pipeline(self.args, pipe, Path(folder, "pipeline"), self.state.step)

    def grid_labels(self) -> list[int]:
        return [i % self.config.num_classes for i in range(min(self.config.num_classes, 8) * 2)]

    def pipeline(self) -> EPGPipeline:
        """An EPGPipeline around a fresh model holding the EMA weights (on every process under FSDP: a collective)."""
        model = ema_model(self.ema, self.config)
        if self.args.mode == "diffusion":
            scheduler = EPGHeunScheduler(image_size=self.config.sample_size)
        else:
            scheduler = EPGConsistencyScheduler(image_size=self.config.sample_size,
                                                prediction_type=self.args.prediction_type)
        pipe = EPGPipeline(model, scheduler, id2label=dict(enumerate(self.names)) if self.names else None,
                           default_num_inference_steps=self.args.num_inference_steps,
                           default_guidance_scale=self.args.guidance_scale,
                           default_guidance_interval=self.args.guidance_interval)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_grid(self, pipe: EPGPipeline):
        """A fixed-seed labelled grid: two images per class (up to 8 classes), image i seeded with i."""
        labels = self.grid_labels()
        images = pipe(class_labels=labels, generator=[torch.Generator().manual_seed(i) for i in range(len(labels))]).images
        return make_image_grid(images, rows=2, cols=len(labels) // 2 or 1)


def write_pipeline(args, pipe: EPGPipeline, folder: Path, step: int, grid=None) -> None:
    """An EMA pipeline folder (weights, sampler and its defaults, id2label) with a model card (and a sample grid)."""
    pipe.save_pretrained(folder)
    description = training_section(f"fine-tuned ({args.mode})", args, step)
    if grid is not None:
        grid.save(folder / "samples.png")
        description += "\n![samples](samples.png)\n"
    datasets = [hub_repo_id(args.dataset_name)] if hub_repo_id(args.dataset_name) else None
    model_card(folder, str(folder), description, datasets=datasets,
               base_model=hub_repo_id(args.encoder or args.init_from_pipeline)).save(folder / "README.md")


def export(args, accelerator, hooks: FineTuneHooks, state):
    """The final pipeline folder, ``<output_dir>/pipeline``, with a model card and a grid; optionally pushed."""
    accelerator.wait_for_everyone()
    pipe = hooks.pipeline()  # every process: gathering sharded (FSDP) weights is a collective
    if not accelerator.is_main_process:
        return
    folder = Path(args.output_dir, "pipeline")
    write_pipeline(args, pipe, folder, state.step, grid=hooks.sample_grid(pipe))
    if args.push_to_hub:
        push_to_hub(str(folder), args.hub_model_id or Path(args.output_dir).name)


if __name__ == "__main__":
    main()
