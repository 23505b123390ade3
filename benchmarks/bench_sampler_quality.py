"""Quality against cost of every sampler on the shipped digits diffusion pipeline: what ``epg sample`` +
``epg evaluate --small-data digits`` give (Fréchet distance, classifier accuracy) against network evaluations.

Each setting samples 1,000 class-balanced images (100 per digit) with ``sample_images`` (exactly ``epg sample``: image
i seeded seed + i) for several seeds (0, 10000, 20000: disjoint noise), then scores them with
``evaluate_small_data`` (exactly ``epg evaluate --small-data digits``). Guidance is the pipeline's default,
classifier-free 3 in (0.19, 1.61], except for the autoguidance rows (``--weak``: a weaker pipeline of the same
recipe, classifier-free guidance off). Writes a JSON of every run, a Markdown table of medians and spreads, and a
PNG plot (matplotlib).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_sampler_quality.py --out benchmarks/results \\
        --weak /tmp/weak/diffusion/pipeline                     # about 30 minutes on 2 CPU cores
"""

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from epg_diffusers import EPGPipeline
from epg_diffusers.defaults import default_pipeline
from epg_diffusers.evaluation import evaluate_small_data, sample_images
from epg_diffusers.schedulers import scheduler_for

SEEDS = (0, 10_000, 20_000)
SETTINGS = [  # (label, sampler, steps, scheduler options, autoguidance scale); guidance: the pipeline's, 3 in (0.19, 1.61]
    *[("guided Heun (paper)", "heun", n, {}, None) for n in (32, 16, 10, 6)],
    ("Heun, no guidance", "heun", 32, {"guidance_scale": 1.0}, None),
    *[("Euler", "euler", n, {}, None) for n in (80, 40, 20, 10)],
    *[("Euler-ancestral", "euler-ancestral", n, {}, None) for n in (40, 20, 10)],
    *[("Euler-SDE", "euler-sde", n, {}, None) for n in (80, 40, 20)],
    *[("EDM-SDE, churn 10", "edm-sde", n, {"s_churn": 10.0}, None) for n in (32, 16, 8)],
    *[("DPM-Solver++ 2M", "dpm++2m", n, {}, None) for n in (24, 16, 12, 8, 6)],
    *[("DPM-Solver++ 3M", "dpm++3m", n, {}, None) for n in (16, 12, 8)],
    *[("UniPC", "unipc", n, {}, None) for n in (16, 12, 8, 6)],
    *[("DPM-Solver++ 2M, no guidance", "dpm++2m", n, {"guidance_scale": 1.0}, None) for n in (20, 16, 12)],
    *[("UniPC, no guidance", "unipc", n, {"guidance_scale": 1.0}, None) for n in (20, 16)],
]
AUTOGUIDANCE = [(f"Heun + autoguidance w={w}", "heun", 16, {}, w) for w in (0.5, 1.0)] + [
    (f"DPM-Solver++ 2M + autoguidance w={w}", "dpm++2m", 8, {}, w) for w in (0.5, 1.0)]


def run_setting(pipe, base_config, label, sampler, steps, options, autoguidance, seed, folder) -> dict:
    options = dict(options)
    guidance = options.pop("guidance_scale", None)  # None: the pipeline's default guidance
    pipe.scheduler = scheduler_for(sampler, base_config, **options)
    start = time.perf_counter()
    settings = sample_images(pipe, str(folder), 1000, seed=seed, batch_size=100, num_inference_steps=steps,
                             guidance_scale=guidance, autoguidance_scale=autoguidance)
    seconds = time.perf_counter() - start
    metrics = evaluate_small_data(str(folder / "samples.npz"), "digits")
    return dict(label=label, sampler=sampler, steps=steps, options=options, autoguidance_scale=autoguidance, seed=seed,
                network_evaluations=settings["num_network_evaluations"], seconds=round(seconds, 1),
                frechet_distance=metrics["frechet_distance"], accuracy=metrics["classifier_accuracy"])


def summarise(runs: list[dict]) -> list[dict]:
    groups = {}
    for run in runs:
        groups.setdefault((run["label"], run["steps"]), []).append(run)
    rows = []
    for (label, steps), group in groups.items():
        fd, acc = [r["frechet_distance"] for r in group], [r["accuracy"] for r in group]
        rows.append(dict(label=label, steps=steps, network_evaluations=group[0]["network_evaluations"], seeds=len(group),
                         fd_median=statistics.median(fd), fd_min=min(fd), fd_max=max(fd),
                         accuracy_median=statistics.median(acc), accuracy_min=min(acc), accuracy_max=max(acc)))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| sampler | steps | network evaluations | Fréchet distance, median (min - max) | accuracy, median (min - max) |",
             "| --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["label"], r["network_evaluations"])):
        lines.append(f"| {r['label']} | {r['steps']} | {r['network_evaluations']} | {r['fd_median']:.2f} "
                     f"({r['fd_min']:.2f} - {r['fd_max']:.2f}) | {100 * r['accuracy_median']:.1f}% "
                     f"({100 * r['accuracy_min']:.1f} - {100 * r['accuracy_max']:.1f}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, top: float = 6.5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(11, 6), dpi=100)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colours, markers = plt.cm.tab20.colors, "osD^v<>pP*Xh"
    for i, label in enumerate(labels):
        group = sorted((r for r in rows if r["label"] == label), key=lambda r: r["network_evaluations"])
        x = [r["network_evaluations"] for r in group]
        y = [r["fd_median"] for r in group]
        spread = [[r["fd_median"] - r["fd_min"] for r in group], [r["fd_max"] - r["fd_median"] for r in group]]
        axis.errorbar(x, y, yerr=spread, marker=markers[i % len(markers)], color=colours[i % len(colours)],
                      capsize=3, label=label)
    heun = next(r for r in rows if r["label"] == "guided Heun (paper)" and r["steps"] == 32)
    axis.axhspan(heun["fd_min"], heun["fd_max"], color="grey", alpha=0.25, label="guided Heun, 74 evaluations: seed spread")
    axis.axvline(20, color="grey", linestyle=":", label="20 evaluations")
    off = [f"{r['label']} {r['steps']} steps: {r['fd_median']:.1f}" for r in rows if r["fd_median"] > top]
    axis.set(xscale="log", ylim=(3.0, top), xlabel="network evaluations per image (log)",
             ylabel="Fréchet distance (digits classifier features)",
             title="epg-digits-diffusion: quality against cost, 1,000 samples, median and range of 3 seeds"
                   + (f"\n(off the scale: {'; '.join(off)})" if off else ""))
    axis.set_xticks([6, 10, 14, 20, 30, 50, 74, 100], labels=["6", "10", "14", "20", "30", "50", "74", "100"])
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON, the table and the plot")
    parser.add_argument("--weak", default=None, help="a weaker pipeline for the autoguidance rows (skipped without)")
    parser.add_argument("--only", choices=("all", "samplers", "autoguidance"), default="all")
    parser.add_argument("--match", default="", help="run only the settings whose label matches this regex")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "sampler_quality.json"
    runs = json.loads(results.read_text()) if results.is_file() else []
    done = {(r["label"], r["steps"], r["seed"]) for r in runs}
    pipe = EPGPipeline.from_pretrained(default_pipeline())
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    settings = [] if args.only == "autoguidance" else list(SETTINGS)
    if args.weak and args.only != "samplers":
        pipe.register_modules(guidance_transformer=EPGPipeline.from_pretrained(args.weak).transformer.eval())
        settings += AUTOGUIDANCE
    for label, sampler, steps, options, autoguidance in settings:
        if not re.search(args.match, label):
            continue
        for seed in SEEDS:
            if (label, steps, seed) in done:
                continue
            with tempfile.TemporaryDirectory() as folder:
                run = run_setting(pipe, base_config, label, sampler, steps, options, autoguidance, seed, Path(folder))
            runs.append(run)
            print(json.dumps(run), flush=True)
            results.write_text(json.dumps(runs, indent=1))  # after every run: an interrupted sweep resumes
    rows = summarise(runs)
    (out / "sampler_quality.md").write_text(table(rows))
    plot(rows, out / "sampler_quality.png")
    print(table(rows))


if __name__ == "__main__":
    main()
