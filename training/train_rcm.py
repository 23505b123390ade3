"""Stage 1: RCM encoder pre-training with ``accelerate launch`` (paper section 3.1, reference notes section 4).

    accelerate launch training/train_rcm.py --preset RCM-B/16 --dataset_name ILSVRC/imagenet-1k --output_dir runs/rcm-b16
    python training/train_rcm.py --preset RCM-tiny/digits --output_dir runs/rcm-digits      # CPU, offline

Every recipe value is a flag; ``--dry_run`` prints the resolved configuration and exits.
"""

import argparse
import copy
import json
import logging
import math
import sys

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from epg_diffusers import RCMEncoderModel, sigmas as sm
from epg_diffusers.models import model_from_preset
from epg_diffusers.training import runner
from epg_diffusers.training.curricula import (
    cosine_tau2, draw_grid_index, interpolated_tau, num_scales, step_generator, step_seed,
)
from epg_diffusers.training.data import SeededImageDataset, collate_skipping_broken, load_image_dataset, rcm_views
from epg_diffusers.training.objectives import collapse_diagnostic, rcm_pretrain_loss
from epg_diffusers.training.recipes import RCM_RECIPES, get_recipe

logger = logging.getLogger("epg_diffusers.training")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True, help=f"recipe: {', '.join(RCM_RECIPES)}")
    parser.add_argument("--dataset_name", default=None, help="Hub id, save_to_disk / imagefolder dir, or 'digits'")
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--model_config", type=json.loads, default={}, help="JSON overrides of the encoder config")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_batch_size", type=int, help="global batch over all processes and accumulation")
    parser.add_argument("--max_train_steps", type=int)
    parser.add_argument("--learning_rate", type=float)
    parser.add_argument("--lr_scheduler", default=None)
    parser.add_argument("--lr_warmup_steps", type=int)
    parser.add_argument("--adam_beta1", type=float)
    parser.add_argument("--adam_beta2", type=float)
    parser.add_argument("--weight_decay", type=float)
    parser.add_argument("--momentum", type=float, help="momentum-encoder EMA rate")
    parser.add_argument("--contrastive_tau", type=float)
    parser.add_argument("--consistency_tau", choices=["interpolated", "constant"], help="paper tau(sigma) or reference 0.1")
    parser.add_argument("--tau1", type=float)
    parser.add_argument("--tau2_start", type=float)
    parser.add_argument("--tau2_end", type=float)
    parser.add_argument("--curriculum_s0", type=int)
    parser.add_argument("--curriculum_s1", type=int)
    parser.add_argument("--loss_terms", choices=["both", "contrastive", "consistency"], default="both",
                        help="ablations: drop the consistency or the contrastive term")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--max_grad_norm", type=float, default=None, help="no clipping by default (reference)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument("--checkpointing_steps", type=int, default=5000)
    parser.add_argument("--checkpoints_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    parser.add_argument("--max_steps_per_run", type=int, default=None,
                        help="stop (after checkpointing) once this invocation has trained this many steps, e.g. to "
                             "fit a cluster time limit; resume with --resume_from_checkpoint latest")
    parser.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, ... or none")
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--diagnostic_every", type=int, default=100, help="collapse diagnostic period (steps)")
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--dry_run", action="store_true", help="print the resolved configuration and exit")
    args = parser.parse_args(argv)
    recipe = get_recipe(args.preset, RCM_RECIPES)
    for key, value in recipe.items():  # recipe values fill whatever the command line left unset
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.dataset_name is None:
        parser.error("`--dataset_name` is required for this preset")
    return args


def build_encoder(args) -> RCMEncoderModel:
    if isinstance(args.model, str):
        return model_from_preset(args.model, **args.model_config)
    return RCMEncoderModel(**{**args.model, **args.model_config})


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        print(json.dumps(vars(args), indent=2, sort_keys=True))
        return
    accelerator = runner.make_accelerator(args)
    resume_path = runner.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    online = build_encoder(args).train()
    resolution = online.config.sample_size
    shift = sm.resolution_shift(resolution)
    data = SeededImageDataset(
        load_image_dataset(args.dataset_name, args.dataset_split, args.image_column, args.label_column, resolution),
        rcm_views(resolution), args.seed,
    )
    if args.gradient_checkpointing:
        online.enable_gradient_checkpointing()
    if accelerator.num_processes > 1:
        if accelerator.device.type == "cpu":  # torch's SyncBatchNorm has no CPU kernel
            logger.warning("CPU run: projector BatchNorm statistics are per process (no SyncBatchNorm on CPU)")
        else:
            online = torch.nn.SyncBatchNorm.convert_sync_batchnorm(online)
    # Momentum encoder: EMA of the parameters only; like the reference it stays in eval mode with its
    # initial BatchNorm statistics.
    target = AveragedModel(copy.deepcopy(online), multi_avg_fn=get_ema_multi_avg_fn(args.momentum), use_buffers=False)
    target.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        online.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay
    )
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    loader = torch.utils.data.DataLoader(
        data, batch_size=runner.micro_batch_size(args, accelerator), shuffle=True, drop_last=True,
        num_workers=args.dataloader_num_workers, collate_fn=collate_skipping_broken,
    )
    if len(loader) < accelerator.num_processes * args.gradient_accumulation_steps:
        raise ValueError(f"data set of {len(data)} images is smaller than one global batch of {args.train_batch_size}.")
    online, optimizer, loader = accelerator.prepare(online, optimizer, loader)
    target.to(accelerator.device)
    accelerator.register_for_checkpointing(lr_scheduler, target)
    state = runner.TrainState()
    if resume_path is not None:
        runner.load_checkpoint(accelerator, resume_path, state)
    if accelerator.is_main_process:
        runner.write_run_config(args, args.output_dir)
        accelerator.init_trackers("rcm", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                 for k, v in vars(args).items()})
    train(args, accelerator, online, target, optimizer, lr_scheduler, loader, data, state, shift)
    if state.step >= args.max_train_steps:
        export(args, accelerator, online, state)


def train(args, accelerator, online, target, optimizer, lr_scheduler, loader, data, state, shift):
    steps_per_epoch = len(loader) // args.gradient_accumulation_steps
    micro, rank = runner.micro_batch_size(args, accelerator), accelerator.process_index
    throughput, logs = runner.Throughput(), []
    stop_at = min(args.max_train_steps, state.step + (args.max_steps_per_run or args.max_train_steps))
    while state.step < stop_at:
        data.set_epoch(state.epoch)
        loader.set_epoch(state.epoch)
        done_in_epoch = state.step - state.epoch * steps_per_epoch
        batches = accelerator.skip_first_batches(loader, done_in_epoch * args.gradient_accumulation_steps) \
            if done_in_epoch else loader
        micro_step = 0  # index of the micro-batch within the current optimisation step
        for batch in batches:
            with accelerator.accumulate(online):
                num = num_scales(state.step, args.max_train_steps, args.curriculum_s0, args.curriculum_s1)
                n = draw_grid_index(num, step_generator(args.seed, state.step))  # same n on every process
                grid = sm.karras_sigmas(num) * shift
                t0, tn, tn1 = (grid[i].to(accelerator.device) for i in (-1, n, n + 1))
                tau2 = cosine_tau2(state.step, args.max_train_steps, args.tau2_start, args.tau2_end)
                tau = args.tau1 if args.consistency_tau == "constant" else interpolated_tau(tn / shift, args.tau1, tau2)
                noise_generator = torch.Generator(accelerator.device).manual_seed(
                    step_seed(args.seed, state.step, 1 + rank * 1000 + micro_step))
                noise = torch.randn(batch["x0"].shape, generator=noise_generator, device=accelerator.device)
                with accelerator.autocast():
                    terms = rcm_pretrain_loss(
                        online, target.module, batch["x0"], batch["view1"], batch["view2"], noise, (t0, tn, tn1),
                        gather=accelerator.gather, offset=rank * micro, consistency_tau=tau,
                    )
                loss = {"both": terms["loss"], "contrastive": terms["contrastive_loss"],
                        "consistency": terms["consistency"]}[args.loss_terms].mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(online.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            throughput.add(len(batch["x0"]))
            logs.append({k: v.detach().mean() for k, v in terms.items()} | {"broken_images": batch["broken"].float()})
            micro_step += 1
            if not accelerator.sync_gradients:
                continue
            micro_step = 0
            if not accelerator.optimizer_step_was_skipped:
                lr_scheduler.step()
                target.update_parameters(accelerator.unwrap_model(online))
            state.step += 1
            if state.step % args.log_every == 0 or state.step == args.max_train_steps:
                log_step(args, accelerator, online, batch, logs, throughput, lr_scheduler, num, tau, shift, state)
                logs = []
            if state.step % args.checkpointing_steps == 0 or state.step == stop_at:
                runner.save_checkpoint(accelerator, args.output_dir, state, args.checkpoints_total_limit)
            if state.step >= stop_at:
                break
        else:
            state.epoch += 1


def log_step(args, accelerator, online, batch, logs, throughput, lr_scheduler, num, tau, shift, state):
    means = {k: accelerator.gather(torch.stack([row[k] for row in logs]).mean()[None]).mean().item() for k in logs[0]}
    metrics = {
        **means, "lr": lr_scheduler.get_last_lr()[0], "tau": float(torch.as_tensor(tau)), "num_scales": num,
        "img_per_s_per_device": throughput.pop(), "peak_memory_gb": runner.peak_memory_gb(accelerator.device),
    }
    if state.step % args.diagnostic_every == 0 or state.step == args.max_train_steps:
        with torch.no_grad(), accelerator.autocast():
            stds = collapse_diagnostic(accelerator.unwrap_model(online), batch["x0"], shift)
        metrics.update({f"feature_std/sigma_{s:g}": v for s, v in stds.items()})
        metrics["feature_std/healthy_reference"] = 1 / math.sqrt(accelerator.unwrap_model(online).config.embed_dim)
    accelerator.log(metrics, step=state.step)
    if accelerator.is_main_process:
        runner.append_metrics(args.output_dir, state.step, metrics)


def export(args, accelerator, online, state):
    """Save the online encoder (what fine-tuning starts from) with a model card; optionally push it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = f"{args.output_dir}/encoder"
        accelerator.unwrap_model(online).save_pretrained(folder)  # SyncBatchNorm saves BatchNorm1d's keys
        runner.write_model_card(folder, "RCM encoder", args, state.step, sys.argv)
        if args.push_to_hub:
            runner.push_folder(folder, args.hub_model_id or f"{args.output_dir.rstrip('/').split('/')[-1]}")
    accelerator.end_training()


if __name__ == "__main__":
    main()
