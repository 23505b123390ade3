"""Stage 1: RCM encoder pre-training with ``accelerate launch`` (paper section 3.1, reference notes section 4).

    accelerate launch training/train_rcm.py --preset RCM-B/16 --dataset_name ILSVRC/imagenet-1k --output_dir runs/rcm-b16
    python training/train_rcm.py --preset RCM-tiny/digits --output_dir runs/rcm-digits      # CPU, offline

Every recipe value is a flag; ``--dry_run`` prints the resolved configuration and exits.
"""

import argparse
import copy
import math
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.optimization import get_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from epg_diffusers import RCMEncoderModel
from epg_diffusers import sigmas as sm
from epg_diffusers.hub import push_to_hub
from epg_diffusers.model_card import hub_repo_id, model_card, training_section
from epg_diffusers.models import model_from_preset
from epg_diffusers.training import runner
from epg_diffusers.training.curricula import cosine_tau2, draw_grid_index, interpolated_tau, num_scales
from epg_diffusers.training.data import rcm_views
from epg_diffusers.training.objectives import collapse_diagnostic, rcm_pretrain_loss
from epg_diffusers.training.recipes import RCM_RECIPES
from epg_diffusers.training.seeding import stream_generator

logger = get_logger("epg_diffusers.training")  # accelerate's: the main process logs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runner.add_common_arguments(parser, RCM_RECIPES)
    parser.add_argument("--momentum", type=float, help="momentum-encoder EMA rate")
    parser.add_argument("--momentum_bn_statistics", choices=["initial", "online"],
                        help="BatchNorm running statistics of the momentum encoder (eval mode): 'initial' keeps its "
                             "initial mean 0 / var 1, as the reference does (paper recipes); 'online' copies the online "
                             "encoder's after every update (the digits recipe)")
    parser.add_argument("--contrastive_tau", type=float)
    parser.add_argument("--consistency_tau", choices=["interpolated", "constant"], help="paper tau(sigma) or reference 0.1")
    parser.add_argument("--tau1", type=float)
    parser.add_argument("--tau2_start", type=float)
    parser.add_argument("--tau2_end", type=float)
    parser.add_argument("--curriculum_s0", type=int)
    parser.add_argument("--curriculum_s1", type=int)
    parser.add_argument("--loss_terms", choices=["both", "contrastive", "consistency"], default="both",
                        help="ablations: train on one term only")
    parser.add_argument("--diagnostic_every", type=int, default=100, help="collapse diagnostic period (steps)")
    return runner.resolve_arguments(parser, argv, RCM_RECIPES)


def build_encoder(args) -> RCMEncoderModel:
    if isinstance(args.model, str):
        return model_from_preset(args.model, **args.model_config)
    return RCMEncoderModel(**{**args.model, **args.model_config})


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        runner.print_dry_run(args)
        return
    accelerator = runner.make_accelerator(args)
    resume_path = runner.resolve_resume(args.resume_from_checkpoint, args.output_dir)
    online = build_encoder(args).train()
    resolution = online.config.sample_size
    data, _ = runner.training_data(args, accelerator, rcm_views(resolution), resolution)
    if args.gradient_checkpointing:
        online.enable_gradient_checkpointing()
    if accelerator.num_processes > 1:
        if accelerator.device.type == "cpu":  # torch's SyncBatchNorm has no CPU kernel
            logger.warning("CPU run: projector BatchNorm statistics are per process (no SyncBatchNorm on CPU)")
        else:
            online = torch.nn.SyncBatchNorm.convert_sync_batchnorm(online)
    # Momentum encoder: EMA of the parameters only, in eval mode; its BatchNorm statistics per
    # --momentum_bn_statistics (AveragedModel with use_buffers=False copies the online ones at every update)
    target = AveragedModel(copy.deepcopy(online), multi_avg_fn=get_ema_multi_avg_fn(args.momentum), use_buffers=False)
    target.eval().requires_grad_(False)
    initial_buffers = [b.detach().clone() for b in target.module.buffers()]  # before a checkpoint is loaded
    optimizer = torch.optim.AdamW(
        online.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.weight_decay
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    loader = runner.make_loader(args, accelerator, data)
    online, optimizer, loader = runner.prepare(accelerator, online, optimizer, loader)
    target.to(accelerator.device)
    accelerator.register_for_checkpointing(lr_scheduler, target)
    state = runner.start_run(args, accelerator, resume_path, "rcm")
    hooks = RCMHooks(args, accelerator, online, target, lr_scheduler, state, initial_buffers)
    runner.train_loop(args, accelerator, online, optimizer, loader, data, state, hooks)
    if state.step >= args.max_train_steps:
        export(args, accelerator, online, state)
    accelerator.end_training()


class RCMHooks:
    """The pre-training step: curriculum, shared noise, loss terms, momentum update and logging."""

    def __init__(self, args, accelerator, online, target, lr_scheduler, state, initial_buffers):
        self.args, self.accelerator, self.online, self.target = args, accelerator, online, target
        self.initial_buffers = [b.to(accelerator.device) for b in initial_buffers]
        self.lr_scheduler, self.state = lr_scheduler, state
        self.shift = sm.resolution_shift(accelerator.unwrap_model(online).config.sample_size)
        self.throughput = runner.Throughput()

    def loss(self, batch, micro_step):
        args, step, device = self.args, self.state.step, self.accelerator.device
        self.num = num_scales(step, args.max_train_steps, args.curriculum_s0, args.curriculum_s1)
        n = draw_grid_index(self.num, stream_generator(args.seed, "grid_index", step=step))  # same n on every process
        grid = sm.karras_sigmas(self.num) * self.shift
        t0, tn, tn1 = (grid[i].to(device) for i in (-1, n, n + 1))
        tau2 = cosine_tau2(step, args.max_train_steps, args.tau2_start, args.tau2_end)
        self.tau = args.tau1 if args.consistency_tau == "constant" else interpolated_tau(tn / self.shift, args.tau1, tau2)
        rank = self.accelerator.process_index
        generator = stream_generator(args.seed, "noise", device, step=step, process=rank, micro_step=micro_step)
        noise = torch.randn(batch["x0"].shape, generator=generator, device=device)  # one eps per image
        terms = rcm_pretrain_loss(
            self.online, self.target.module, batch["x0"], batch["view1"], batch["view2"], noise, (t0, tn, tn1),
            gather=self.accelerator.gather, offset=rank * len(noise), consistency_tau=self.tau,
            contrastive_tau=args.contrastive_tau,
        )
        self.throughput.add(len(noise))
        chosen = {"both": terms["loss"], "contrastive": terms["contrastive_loss"],
                  "consistency": terms["consistency_loss"]}
        return {**terms, "loss": chosen[args.loss_terms]}

    def after_step(self):
        self.lr_scheduler.step()
        self.target.update_parameters(self.accelerator.unwrap_model(self.online))  # also copies the online buffers
        buffers = list(self.target.module.buffers())
        if self.args.momentum_bn_statistics == "initial":  # the reference: mean 0 / var 1 forever
            for buffer, initial in zip(buffers, self.initial_buffers):
                buffer.copy_(initial)
        elif torch.distributed.is_initialized():
            # without SyncBatchNorm (CPU) the online statistics differ between processes; process 0's are the ones
            # a checkpoint keeps, so every process uses them and a resumed run normalises exactly as before
            for buffer in buffers:
                torch.distributed.broadcast(buffer, src=0)

    def log(self, batch, logs):
        accelerator, args = self.accelerator, self.args
        encoder = accelerator.unwrap_model(self.online)
        metrics = {
            **runner.mean_logs(accelerator, logs), "lr": self.lr_scheduler.get_last_lr()[0],
            "tau": float(torch.as_tensor(self.tau)), "num_scales": self.num,
            "img_per_s_per_device": self.throughput.pop(), "peak_memory_gb": runner.peak_memory_gb(accelerator.device),
        }
        if self.state.step % args.diagnostic_every == 0 or self.state.step == args.max_train_steps:
            with torch.no_grad(), accelerator.autocast():
                stds = collapse_diagnostic(encoder, batch["x0"], self.shift)
            metrics.update({f"feature_std/sigma_{s:g}": v for s, v in stds.items()})
            metrics["feature_std/healthy_reference"] = 1 / math.sqrt(encoder.config.embed_dim)
        accelerator.log(metrics, step=self.state.step)
        if accelerator.is_main_process:
            runner.append_metrics(args.output_dir, self.state.step, metrics)


def export(args, accelerator, online, state):
    """Save the online encoder (what fine-tuning starts from) with a model card; optionally push it."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = f"{args.output_dir}/encoder"
        accelerator.unwrap_model(online).save_pretrained(folder)  # SyncBatchNorm saves BatchNorm1d's keys
        datasets = [hub_repo_id(args.dataset_name)] if hub_repo_id(args.dataset_name) else None
        model_card(folder, folder, training_section("pre-trained", args, state.step),
                   datasets=datasets).save(f"{folder}/README.md")
        if args.push_to_hub:
            push_to_hub(folder, args.hub_model_id or Path(args.output_dir).name)


if __name__ == "__main__":
    main()
