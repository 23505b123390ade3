"""Images per second of ``epg sample`` (``sample_images``) for the EPG-XL/16 shape, 32 guided Heun steps at a fixed
batch: fp32, bf16 and torch.compile, against the reference's sampling loop (guided evaluations as two separate
forwards, math attention, fp32) in the same run.

Every mode samples the same images (same model weights, per-image seeds 0..N-1, random labels) and is timed
end to end: noise, 32-point Heun with guidance 2.5 in (0.19, 1.61] (74 network evaluations per image), uint8
conversion and, for ``epg sample``, committing the part file and writing ``samples.npz``. The reference loop
(``benchmarks/bench_sampling.py``'s ``ref_sample``) gets the same noise and labels and stops at uint8 images.
Modes run interleaved (round-robin over repeats, medians), after a short warm-up (two 2-point runs, one with
every evaluation guided, one with none) that also compiles both batch shapes.

EPG-XL/16 has 12 encoder blocks of width 768 and 12 decoder blocks of width 1584 at 256 px; on CPU the default
keeps those widths and the 258-token shape but only ``--depth`` blocks of each (full depth: ``--depth 12``).

    PYTHONPATH=. python benchmarks/bench_epg_sample.py                            # CPU, about 5 minutes on 2 cores
    PYTHONPATH=. python benchmarks/bench_epg_sample.py --device cuda --depth 12 --batch 64 --repeats 3
"""

import argparse
import copy
import os
import statistics
import tempfile
import time

import diffusers
import numpy as np
import torch
from bench_sampling import GUIDANCE, INTERVAL, STEPS, build_models, device_name, ref_sample, schedule, use_attention

from epg_diffusers import EPGHeunScheduler, EPGPipeline
from epg_diffusers.evaluation import sample_images
from epg_diffusers.evaluation.labels import random_labels


def make_pipelines(models: dict, compile_blocks: bool) -> dict:
    """One EPGPipeline per ``epg sample`` mode on the benchmark's weights (fused SDPA attention); the compiled
    mode gets its own copy of the fp32 model with its repeated blocks compiled, as ``epg sample --compile`` does."""
    transformers = {"epg sample fp32": models["fp32"], "epg sample bf16": models["bf16"]}
    if compile_blocks:
        transformers["epg sample fp32 + compile"] = copy.deepcopy(models["fp32"])
        transformers["epg sample fp32 + compile"].compile_repeated_blocks(fullgraph=True)
    pipes = {}
    for mode, transformer in transformers.items():
        pipes[mode] = EPGPipeline(use_attention(transformer, "ours"), EPGHeunScheduler(image_size=256))
        pipes[mode].set_progress_bar_config(disable=True)
    return pipes


def run_epg_sample(pipe, n: int, batch: int, steps: int = STEPS, scale: float = GUIDANCE, interval=INTERVAL):
    """``sample_images`` into a fresh folder; returns the uint8 images it wrote."""
    with tempfile.TemporaryDirectory() as folder:
        sample_images(pipe, folder, n, labels="random", batch_size=batch, num_inference_steps=steps,
                      guidance_scale=scale, guidance_interval=interval)
        with np.load(os.path.join(folder, "samples.npz")) as data:
            return torch.from_numpy(data["arr_0"])


def warm_up(pipe, batch: int):
    """Two 2-point runs: every evaluation guided (batch 2B), then none (batch B); compiles both shapes."""
    run_epg_sample(pipe, batch, batch, steps=2, interval=(0.0, float("inf")))
    run_epg_sample(pipe, batch, batch, steps=2, scale=1.0)


def run_reference(model, pipe, n: int, batch: int, device) -> torch.Tensor:
    """The reference-style loop over the same seeds, noise and labels, in batches; uint8 NHWC images."""
    labels = torch.from_numpy(random_labels(n, model.config.num_classes, 0))
    images = []
    for start in range(0, n, batch):
        idx = range(start, min(start + batch, n))
        eps = torch.cat([torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(i)) for i in idx])
        x = ref_sample(model, eps.to(device), labels[list(idx)].to(device))
        pixels = pipe.postprocess(x, "pt")  # x * std + mean, clamp [0, 1]
        images.append((pixels * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(images)


def timed(fn, device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=1, help="encoder = decoder blocks (EPG-XL/16: 12)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (fixed for every mode)")
    parser.add_argument("--num-batches", type=int, default=1, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per mode (median reported)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile mode")
    args = parser.parse_args()
    device = torch.device(args.device)
    diffusers.utils.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    load_start, wall_start = os.getloadavg()[0], time.perf_counter()

    models = build_models(device, depth=args.depth, decoder_depth=args.depth)
    pipes = make_pipelines(models, not args.no_compile)
    n = args.batch * args.num_batches
    reference = use_attention(copy.deepcopy(models["fp32"]), "ref")  # math attention, two forwards when guided
    runs = {"ref fp32": lambda: run_reference(reference, pipes["epg sample fp32"], n, args.batch, device)}
    runs.update({mode: (lambda p=pipe: run_epg_sample(p, n, args.batch)) for mode, pipe in pipes.items()})

    warmup = {mode: timed(lambda p=pipe: warm_up(p, args.batch), device)[0] for mode, pipe in pipes.items()}
    warmup["ref fp32"] = timed(lambda: reference(torch.randn(args.batch, 3, 256, 256, device=device),
                                                 torch.ones(args.batch, device=device),
                                                 torch.zeros(args.batch, dtype=torch.long, device=device)), device)[0]
    times, outputs = {mode: [] for mode in runs}, {}
    for _ in range(args.repeats):
        for mode, fn in runs.items():
            seconds, outputs[mode] = timed(fn, device)
            times[mode].append(seconds)
    wall = time.perf_counter() - wall_start

    base = statistics.median(times["ref fp32"])
    evaluations = sum(schedule(pipes["epg sample fp32"]))
    print(f"\n{device_name(device)}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), "
          f"diffusers {diffusers.__version__}, load avg {load_start:.2f} -> {os.getloadavg()[0]:.2f}, "
          f"wall {wall / 60:.1f} min")
    print(f"EPG-XL/16 widths, {args.depth} + {args.depth} blocks, 256 px, batch {args.batch}, {n} images per run, "
          f"{STEPS} guided Heun steps ({evaluations} network evaluations per image), median of {args.repeats}\n")
    print("| mode | s / run | images / s | speedup vs ref fp32 | warm-up s (incl. compile) "
          "| uint8 diff vs ref fp32 (max / mean) |")
    print("|---|---|---|---|---|---|")
    for mode in runs:
        median = statistics.median(times[mode])
        diff = (outputs[mode].int() - outputs["ref fp32"].int()).abs().float()
        print(f"| {mode} | {median:.2f} | {n / median:.3f} | {base / median:.2f}x | {warmup[mode]:.1f} "
              f"| {diff.max():.0f} / {diff.mean():.2f} |")


if __name__ == "__main__":
    main()
