"""Gradio demo of EPG: class-conditional pixel-space generation with a diffusion or a consistency model.

Samplers: on the diffusion model, DPM-Solver++ 3M (the fast default), the paper's guided Heun, UniPC and the
reference's Euler family and EDM-SDE, with interval classifier-free guidance or, when a weaker model is
configured, autoguidance; one-step or few-step sampling of the consistency model; and image-to-image from an
uploaded image. The models, in this order: ``EPG_MODEL_ID`` / ``EPG_CONSISTENCY_MODEL_ID`` / ``EPG_WEAK_MODEL_ID``
(a folder or a Hub repo id), ``space.json`` next to this file (written by ``epg space``), else the pipelines this
project ships (``epg-digits-diffusion``, ``epg-digits-consistency``; no weak model). On ZeroGPU hardware the
generation runs under ``spaces.GPU``. The server honours ``GRADIO_SERVER_NAME`` and ``GRADIO_SERVER_PORT``.

Run: ``python pipelines/space/app.py`` (or ``python app.py`` in a folder built by ``epg space``) and open
http://127.0.0.1:7860.
"""

import json
import os
import random
import time
from pathlib import Path

import gradio as gr
import PIL.Image
import torch

from epg_diffusers import EPGPipeline
from epg_diffusers.defaults import (
    CONSISTENCY_PIPELINE, DIFFUSION_PIPELINE, SAMPLING_PRESETS, default_pipeline, load_transformer,
)
from epg_diffusers.schedulers import scheduler_for

try:  # ZeroGPU: a GPU is attached while a decorated function runs; elsewhere the app runs without `spaces`
    import spaces

    on_gpu = spaces.GPU
except ImportError:
    def on_gpu(function):
        return function

HERE = Path(__file__).resolve().parent
MAX_IMAGES = 8  # images per request
MAX_STEPS = 64  # sampling steps per request (Heun: about 2 network evaluations per step, x2 where guided)
MAX_SEED = 2**31 - 1
QUEUE_SIZE = 16  # requests waiting beyond this are turned away by the queue
HEUN, FAST, ONE_STEP, FEW_STEP = ("Guided Heun (diffusion)", "DPM-Solver++ 3M (diffusion, fast)",
                                  "One-step (consistency)", "Few-step (consistency)")
SAMPLERS = {  # shown name -> (pipeline, epg_diffusers.schedulers.SAMPLERS name, steps; None: the pipeline's own)
    FAST: ("diffusion", *SAMPLING_PRESETS["fast"]),  # the paper's quality in 14 evaluations on the digits
    HEUN: ("diffusion", "heun", None),
    "UniPC (diffusion)": ("diffusion", "unipc", 16),
    "Euler (diffusion)": ("diffusion", "euler", 50),
    "Euler-ancestral (diffusion)": ("diffusion", "euler-ancestral", 50),
    "EDM-SDE (diffusion)": ("diffusion", "edm-sde", 32),
    ONE_STEP: ("consistency", None, 1),
    FEW_STEP: ("consistency", None, 2),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


def model_path(env: str, kind: str, shipped: str | None) -> str | None:
    """``$env`` (a folder or a Hub repo id), else ``space.json``'s ``kind`` entry, else the shipped pipeline."""
    if os.environ.get(env):
        return os.environ[env]
    if (HERE / "space.json").is_file():
        value = json.loads((HERE / "space.json").read_text()).get(kind)
        return str(HERE / value) if value and (HERE / value).is_dir() else value
    return default_pipeline(shipped, env) if shipped else None


def load(path: str) -> EPGPipeline:
    pipe = EPGPipeline.from_pretrained(path, dtype=DTYPE).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Loaded once at start-up; every request reuses them (the queue runs one request at a time, see below).
PIPES = {
    "diffusion": load(model_path("EPG_MODEL_ID", "diffusion", DIFFUSION_PIPELINE)),
    "consistency": load(model_path("EPG_CONSISTENCY_MODEL_ID", "consistency", CONSISTENCY_PIPELINE)),
}
SCHEDULER_CONFIG = PIPES["diffusion"].scheduler.config  # every diffusion sampler is built from it
WEAK = model_path("EPG_WEAK_MODEL_ID", "weak", None)  # autoguidance's weaker model, when one is configured
if WEAK:
    PIPES["diffusion"].register_modules(guidance_transformer=load_transformer(WEAK, DTYPE).to(DEVICE))
CLASS_NAMES = {int(idx): name for idx, name in PIPES["diffusion"].config.id2label.items()}
CLASSES = [(name, idx) for idx, name in sorted(CLASS_NAMES.items())]  # (shown, value) pairs for the picker


def pipe_for(sampler: str) -> EPGPipeline:
    """The sampler's pipeline, with the sampler's scheduler in place."""
    kind, name, _ = SAMPLERS[sampler]
    pipe = PIPES[kind]
    if name is not None:
        pipe.scheduler = scheduler_for(name, SCHEDULER_CONFIG)
    return pipe


def sampler_defaults(sampler: str) -> tuple[int, float, float, float]:
    """Steps, guidance scale and guidance interval (low, high) of the sampler (its pipeline's saved defaults)."""
    kind, name, steps = SAMPLERS[sampler]
    pipe = PIPES[kind]
    configured = pipe.config.default_num_inference_steps
    if steps is None:
        steps = scheduler_for(name, SCHEDULER_CONFIG).resolve_steps(configured)
    if sampler == FEW_STEP:
        steps = max(2, configured or 2)
    low, high = pipe.config.default_guidance_interval or (0.0, pipe.scheduler.config.sigma_max)
    return steps, pipe.config.default_guidance_scale, low, high


def on_sampler_change(sampler: str):
    steps, guidance_scale, low, high = sampler_defaults(sampler)
    return gr.update(value=steps, interactive=sampler != ONE_STEP), guidance_scale, low, high


def check_request(class_id, steps, num_images, guidance_scale, low, high, seed) -> str | None:
    """A message for the page when an input is missing or beyond the caps, else None."""
    if class_id in (None, ""):
        return "Pick a class first."
    if steps is None or not 1 <= steps <= MAX_STEPS:
        return f"Steps must be a whole number from 1 to {MAX_STEPS} (got {steps})."
    if num_images is None or not 1 <= num_images <= MAX_IMAGES:
        return f"Images must be from 1 to {MAX_IMAGES} (got {num_images})."
    if guidance_scale is None or low is None or high is None:
        return "Fill in the guidance scale and both ends of the guidance interval."
    if seed is None or not 0 <= seed <= MAX_SEED:
        return f"Seed must be a whole number from 0 to {MAX_SEED} (got {seed})."
    return None


def editing(image: PIL.Image.Image | None, strength: float) -> dict:
    """Image-to-image arguments: the upload as an RGB image of the model's size, and the strength."""
    if image is None:
        return {}
    size = PIPES["diffusion"].transformer.config.sample_size
    return {"image": image.convert("RGB").resize((size, size), PIL.Image.Resampling.LANCZOS), "strength": strength}


@on_gpu
def generate(class_id, sampler, steps, num_images, guidance_scale, low, high, autoguidance, image, strength, seed,
             randomize):
    """Sample ``num_images`` images of one class; image i uses the seed ``seed + i`` (its caption)."""
    message = check_request(class_id, steps, num_images, guidance_scale, low, high, seed)
    if message:
        return gr.skip(), f"⚠️ {message}", gr.skip()
    seed = random.randint(0, MAX_SEED - MAX_IMAGES) if randomize else int(seed)
    num_images, steps = int(num_images), 1 if sampler == ONE_STEP else int(steps)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    guide = {"autoguidance_scale": float(autoguidance), "guidance_scale": 1.0} if autoguidance else {
        "guidance_scale": float(guidance_scale), "guidance_interval": (float(low), float(high))}
    edit = editing(image, float(strength))
    start = time.perf_counter()
    try:
        output = pipe_for(sampler)(class_labels=[int(class_id)] * num_images, num_inference_steps=steps,
                                   generator=generators, **guide, **edit)
    except ValueError as error:  # the pipeline's own input checks (e.g. an empty guidance interval)
        return gr.skip(), f"⚠️ {error}", seed
    seconds = time.perf_counter() - start
    images = [(image, f"seed {seed + i}") for i, image in enumerate(output.images)]
    extras = (f" · autoguidance {autoguidance:g}" if autoguidance else "") + (
        f" · image-to-image, strength {strength:g}" if edit else "")
    status = (
        f"**{CLASS_NAMES.get(int(class_id), class_id)}** · {sampler}, {steps} step(s){extras} · "
        f"network evaluations per image: {output.num_network_evaluations} · "
        f"time: {seconds:.2f} s for {num_images} image(s) on {DEVICE}"
    )
    return images, status, seed


START_STEPS, START_GUIDANCE, START_LOW, START_HIGH = sampler_defaults(FAST)
# Presets: a class with each sampler at its usual steps (class, sampler, steps, images); Gradio shows class 0 blank
EXAMPLES = [[CLASSES[(i + 1) % len(CLASSES)][1], sampler, sampler_defaults(sampler)[0], 4]
            for i, sampler in enumerate([FAST, HEUN, ONE_STEP, FEW_STEP])]

with gr.Blocks(title="EPG: there is no VAE") as demo:
    gr.Markdown(
        "# EPG: pixel-space generation without a VAE\n"
        "Pick a class and a sampler. The diffusion samplers use classifier-free guidance inside a noise-level "
        "interval (or autoguidance, when a weaker model is configured); the consistency model needs only one or a "
        "few network evaluations. Upload an image to edit it towards the class instead (image-to-image)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            class_id = gr.Dropdown(CLASSES, value=None, label="Class", elem_id="class")
            sampler = gr.Radio(list(SAMPLERS), value=FAST, label="Sampler", elem_id="sampler")
            steps = gr.Number(START_STEPS, label=f"Steps (1 to {MAX_STEPS})", precision=0, elem_id="steps")
            num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="num-images")
            with gr.Accordion("Guidance", open=False):
                guidance_scale = gr.Number(START_GUIDANCE, label="Guidance scale (1 = off)", elem_id="guidance-scale")
                with gr.Row():
                    low = gr.Number(START_LOW, label="Interval: from sigma (exclusive)", elem_id="guidance-low")
                    high = gr.Number(START_HIGH, label="to sigma (inclusive)", elem_id="guidance-high")
                autoguidance = gr.Slider(0, 3, value=0, step=0.25, visible=bool(WEAK), elem_id="autoguidance",
                                         label="Autoguidance with the weaker model (0 = off; replaces the above)")
            with gr.Accordion("Image-to-image", open=False):
                image = gr.Image(type="pil", sources=["upload"], label="Start from this image", elem_id="image")
                strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (1 = ignore the image)",
                                     elem_id="strength")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                randomize = gr.Checkbox(True, label="Randomise seed", elem_id="randomize")
            run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Samples", columns=4, format="png", elem_id="gallery")
            status = gr.Markdown("Pick a class and press **Generate**.", elem_id="status")
    gr.Examples(EXAMPLES, [class_id, sampler, steps, num_images], label="Presets", elem_id="presets")

    # a sampler picked by hand brings its defaults; a preset sets its own steps
    sampler.input(on_sampler_change, sampler, [steps, guidance_scale, low, high])
    run.click(
        generate,
        [class_id, sampler, steps, num_images, guidance_scale, low, high, autoguidance, image, strength, seed,
         randomize],
        [gallery, status, seed],
    )

# One request at a time (the pipelines' schedulers hold per-call state); at most QUEUE_SIZE waiting.
demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)

if __name__ == "__main__":
    demo.launch(theme=gr.themes.Soft(), css="#gallery img { image-rendering: pixelated; }")
