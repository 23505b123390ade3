"""Sampling speed of EPG-XL/16: ours (EPGPipeline) against a loop written in the reference's style.

Both sides use the same EPGTransformer2DModel weights. "ref" is a hand-written deterministic Heun loop
(Karras grid x4, x0 clamped to [-1, 1], interval guidance u + 2.5 (c - u) with two separate forwards)
and a plain math attention softmax(q k^T / sqrt(d)) v; "ours" is EPGPipeline + EPGHeunScheduler (fused
SDPA attention, conditional and unconditional branches in one batched forward). Each runs in float32
and with the weights cast to bfloat16. Measured, all in one run, modes interleaved round-robin, medians:

1. seconds per network evaluation at ``--batch`` (plain, and guided: 2 x B forwards vs one 2B forward);
2. seconds per image for 32 guided Heun steps, derived from (1) and the pipeline's evaluation schedule;
3. the derivation checked against real end-to-end sampling loops on a model of the same widths and
   ``--loop-depth`` encoder/decoder blocks at ``--loop-batch`` (``--loop-depth 12`` is the full model);
4. the device's matmul throughput and the model's achieved GFLOP/s per forward (FLOPs counted by torch).

Run from the repository root (about 6 minutes on 2 otherwise idle CPU cores):

    PYTHONPATH=. python benchmarks/bench_sampling.py
    PYTHONPATH=. python benchmarks/bench_sampling.py --device cuda --loop-depth 12 --loop-batch 8 --repeats 5
"""

import argparse
import copy
import itertools
import os
import platform
import statistics
import time

import diffusers
import torch
from torch.utils.flop_counter import FlopCounterMode

from epg_diffusers import EPGHeunScheduler, EPGPipeline, model_from_preset
from epg_diffusers.models import EPGAttention, EPGAttnProcessor
from epg_diffusers.sigmas import karras_sigmas

STEPS, GUIDANCE, INTERVAL, SHIFT = 32, 2.5, (0.19, 1.61), 4.0  # paper sampler at 256 px
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class MathAttnProcessor:
    """Reference-style attention: explicit softmax((q @ k^T) * head_dim**-0.5) @ v, no fused kernel."""

    def __call__(self, attn: EPGAttention, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape
        qkv = attn.qkv(hidden_states).reshape(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # each B H N Dh
        weights = ((query @ key.transpose(-2, -1)) * query.shape[-1] ** -0.5).softmax(dim=-1)
        out = (weights @ value).transpose(1, 2).reshape(batch, tokens, -1)
        return attn.proj_drop(attn.proj(out))


def use_attention(model, style: str):
    """Same weights, the attention processor of ``style`` ("ref": math, "ours": fused SDPA)."""
    for module in model.modules():
        if isinstance(module, EPGAttention):
            module.set_processor(MathAttnProcessor() if style == "ref" else EPGAttnProcessor())
    return model


def build_models(device, **overrides):
    """EPG-XL/16 (optionally shallower) with every parameter perturbed, so no branch is trivially zero."""
    torch.manual_seed(0)
    model = model_from_preset("EPG-XL/16", **overrides).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    model.to(device)
    return {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}


def ref_denoise(model, x, sigma, labels):
    """x0 of the reference-style loop: c_in scaling, cond forward, then a separate uncond forward if guided."""
    inp = (x * (sigma**2 + 0.25) ** -0.5).to(model.dtype)
    time_in = (250.0 * sigma.log()).to(x.device).expand(len(x))
    out = model(inp, time_in, labels).sample.float()
    if INTERVAL[0] < float(sigma) / SHIFT <= INTERVAL[1]:
        uncond = model(inp, time_in, torch.full_like(labels, model.config.num_classes)).sample.float()
        out = uncond + GUIDANCE * (out - uncond)
    return out.clamp(-1.0, 1.0)


def ref_sample(model, eps, labels):
    """Deterministic Heun (k-diffusion Algorithm 2 without churn) on the shifted Karras grid; 62 evaluations."""
    sigmas = karras_sigmas(STEPS) * SHIFT
    x = eps * sigmas[0]
    for sigma, sigma_next in itertools.pairwise(sigmas):
        dt = sigma_next - sigma
        d = (x - ref_denoise(model, x, sigma, labels)) / sigma
        x_pred = x + d * dt
        d_next = (x_pred - ref_denoise(model, x_pred, sigma_next, labels)) / sigma_next
        x = x + (d + d_next) / 2 * dt
    return x


def ours_eval(model, x, sigma, labels):
    """One pipeline evaluation: a single forward, batched cond + uncond when guided."""
    inp = (x * (sigma**2 + 0.25) ** -0.5).to(model.dtype)
    if INTERVAL[0] < float(sigma) / SHIFT <= INTERVAL[1]:
        inp, labels = torch.cat([inp, inp]), torch.cat([labels, torch.full_like(labels, model.config.num_classes)])
    out = model(inp, (250.0 * sigma.log()).to(x.device).expand(len(inp)), labels, return_dict=False)[0].float()
    if len(out) > len(x):
        cond, uncond = out.chunk(2)
        out = uncond + GUIDANCE * (cond - uncond)
    return out


def bench(cases: dict, repeats: int, warmup: int, device) -> dict:
    """Median seconds of each case; the cases run interleaved (round-robin) so drifts hit all alike."""
    times = {name: [] for name in cases}
    for rep in range(warmup + repeats):
        for name, fn in cases.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def schedule(pipe) -> tuple[int, int]:
    """(evaluations, guided evaluations) of the 32-step guided Heun sampler, read from the pipeline."""
    pipe.scheduler.set_timesteps(STEPS)
    guided = pipe.guided_steps(GUIDANCE, INTERVAL)
    return len(guided), sum(guided)


def eval_cases(models, batch, device):
    """Per-evaluation cases: (mode, "plain" | "guided") -> callable, at sigmas outside / inside the interval."""
    x, labels = torch.randn(batch, 3, 256, 256, device=device), torch.arange(batch, device=device)
    plain, guided = torch.tensor(80.0 * SHIFT), torch.tensor(1.0 * SHIFT)
    cases = {}
    for dtype, model in models.items():
        for style, fn in (("ref", ref_denoise), ("ours", ours_eval)):
            for kind, sigma in (("plain", plain), ("guided", guided)):
                run = lambda m=model, s=style, f=fn, sg=sigma: f(use_attention(m, s), x, sg, labels)
                cases[(f"{style} {dtype}", kind)] = run
    return cases


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())


def matmul_gflops(dtype, device, m, k, n, repeats) -> float:
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / bench({"mm": lambda: a @ b}, repeats, 2, device)["mm"] / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="images per evaluation for the per-forward timings")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--loop-depth", type=int, default=2, help="encoder = decoder depth of the loop-check model")
    parser.add_argument("--loop-batch", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    diffusers.utils.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    load_start, wall_start = os.getloadavg()[0], time.perf_counter()

    # 1-2. per-evaluation medians of the full EPG-XL/16 and the derived per-image sampling time
    models = build_models(device)
    pipe = EPGPipeline(models["fp32"], EPGHeunScheduler(image_size=256))
    n_eval, n_guided = schedule(pipe)
    per_eval = bench(eval_cases(models, args.batch, device), args.repeats, args.warmup, device)
    modes = list(dict.fromkeys(mode for mode, _ in per_eval))

    def derive(times, mode):  # seconds of one 32-step guided sampling loop from per-evaluation medians
        return (n_eval - n_guided) * times[(mode, "plain")] + n_guided * times[(mode, "guided")]

    per_image = {mode: derive(per_eval, mode) / args.batch for mode in modes}

    # 4. throughput: FLOPs of one forward (math attention, so every matmul is counted), matmul peaks
    with FlopCounterMode(display=False) as counter:
        use_attention(models["fp32"], "ref")(torch.randn(1, 3, 256, 256, device=device), torch.ones(1, device=device),
                                             torch.zeros(1, dtype=torch.long, device=device))
    flops = counter.get_total_flops() * args.batch
    tokens = args.batch * 258  # the model's GEMM shape: (B * tokens) x 1584 -> 4 * 1584
    peaks = {dt: (matmul_gflops(DTYPES[dt], device, 4096, 4096, 4096, 5),
                  matmul_gflops(DTYPES[dt], device, tokens, 1584, 6336, 5)) for dt in DTYPES}
    del models, pipe

    # 3. real sampling loops on the shallower model: measured vs derived from its own per-evaluation medians
    small = build_models(device, depth=args.loop_depth, decoder_depth=args.loop_depth)
    small_eval = bench(eval_cases(small, args.loop_batch, device), args.repeats, args.warmup, device)
    eps = torch.randn(args.loop_batch, 3, 256, 256, generator=torch.Generator().manual_seed(1)).to(device)
    labels = torch.arange(args.loop_batch, device=device)
    pipes = {dt: EPGPipeline(use_attention(m, "ours"), EPGHeunScheduler(image_size=256)) for dt, m in small.items()}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    outputs = {}

    def run_loop(mode):
        style, dt = mode.split()
        if style == "ref":
            outputs[mode] = pipes[dt].postprocess(ref_sample(use_attention(small[dt], "ref"), eps, labels), "pt")
        else:
            use_attention(small[dt], "ours")
            out = pipes[dt](labels.tolist(), num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=eps,
                            output_type="pt")
            assert out.num_network_evaluations == n_eval + n_guided
            outputs[mode] = out.images

    loops = bench({mode: lambda m=mode: run_loop(m) for mode in modes}, args.repeats, 0, device)
    wall = time.perf_counter() - wall_start

    # report
    base = "ref fp32"
    print(f"\n{device_name(device)}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), diffusers {diffusers.__version__}, "
          f"load avg {load_start:.2f} -> {os.getloadavg()[0]:.2f}, wall {wall / 60:.1f} min")
    print(f"schedule: {n_eval} evaluations, {n_guided} guided ({n_eval + n_guided} network evaluations per image)\n")
    print(f"| mode | s / eval (batch {args.batch}) | s / guided eval | s / image, 32 guided Heun steps (derived) "
          "| speedup vs ref fp32 | speedup vs ref, same dtype | achieved GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        dt = mode.split()[1]
        achieved = flops / per_eval[(mode, "plain")] / 1e9
        print(f"| {mode} | {per_eval[(mode, 'plain')]:.3f} | {per_eval[(mode, 'guided')]:.3f} "
              f"| {per_image[mode]:.3f} | {per_image[base] / per_image[mode]:.2f}x "
              f"| {per_image['ref ' + dt] / per_image[mode]:.2f}x "
              f"| {achieved:.0f} | {100 * achieved / max(peaks[dt]):.0f}% |")
    peak_text = ", ".join(f"{dt} {square:.0f}, {shaped:.0f}" for dt, (square, shaped) in peaks.items())
    print(f"\nforward FLOPs at batch {args.batch}: {flops / 1e12:.3f} TFLOP; "
          f"matmul GFLOP/s (4096^3, {tokens}x1584x6336): {peak_text}")
    for dt in DTYPES:
        floor = flops / (max(peaks[dt]) * 1e9)  # every FLOP at the best measured matmul rate, nothing else costs
        print(f"{dt} bound: forward >= {floor:.3f} s, so no {dt} implementation beats ref {dt} by more than "
              f"{per_eval[('ref ' + dt, 'plain')] / floor:.2f}x")
    for dt in DTYPES:
        print(f"batched guidance, ours {dt}: two batch-{args.batch} forwards / one batch-{2 * args.batch} forward = "
              f"{2 * per_eval[('ours ' + dt, 'plain')] / per_eval[('ours ' + dt, 'guided')]:.2f}x")
    print(f"\nloop check: depth {args.loop_depth} + {args.loop_depth} blocks, batch {args.loop_batch}, "
          f"{STEPS} guided Heun steps\n")
    print("| mode | measured s / loop | measured s / image | derived s / loop | measured / derived "
          "| speedup vs ref fp32 | max abs diff vs ref fp32 |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        diff = (outputs[mode].float() - outputs[base].float()).abs().max().item()
        derived = derive(small_eval, mode)
        print(f"| {mode} | {loops[mode]:.2f} | {loops[mode] / args.loop_batch:.2f} | {derived:.2f} "
              f"| {loops[mode] / derived:.3f} | {loops[base] / loops[mode]:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
