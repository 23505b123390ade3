"""Packaging for epg-diffusers (import name ``epg_diffusers``)."""

from pathlib import Path

from setuptools import find_packages, setup

CORE = [
    "torch>=2.4",
    "diffusers>=0.42",
    "accelerate>=1.0",
    "datasets>=3.0",
    "safetensors>=0.4",
    "huggingface-hub>=1.32,<3.0",
    "numpy>=1.26",
    "Pillow>=10.0",
]
EXTRAS = {
    "train": ["torchvision>=0.19", "tensorboard>=2.14", "scikit-learn>=1.3"],
    "eval": ["scipy>=1.11", "torch-fidelity>=0.3", "scikit-learn>=1.3"],
    "demo": ["gradio==6.31.0"],  # equal to sdk_version in pipelines/space/README.md
}
EXTRAS["test"] = sorted({"pytest>=8.0", "playwright==1.65.2", *EXTRAS["train"], *EXTRAS["eval"], *EXTRAS["demo"]})

setup(
    name="epg-diffusers",
    version="0.1.0",
    description="EPG (There is No VAE, ICLR 2026): pixel-space diffusion and consistency models for diffusers",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["epg_diffusers", "epg_diffusers.*"]),
    package_data={"epg_diffusers": ["data/*.json"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["epg=epg_diffusers.cli:main"]},
)
