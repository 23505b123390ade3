"""`epg convert`: reference-format checkpoints (torch.save pickles in the reference's layout) -> diffusers folders."""

import os

import pytest
import torch
import yaml

from epg_diffusers import (
    EPGConsistencyScheduler,
    EPGHeunScheduler,
    EPGPipeline,
    EPGTransformer2DModel,
    RCMEncoderModel,
    cli,
)
from epg_diffusers.conversion import PUBLISHED, convert
from epg_diffusers.models import PRESETS

FORWARD_TOL, SAMPLE_TOL = 1e-5, 1e-4
TINY_ARCH = dict(sample_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=4,
                 decoder_depth=2, decoder_embed_dim=96, decoder_num_heads=4)


def reference_folder(root, name: str, ema: dict, online: dict | None = None):
    """A folder laid out like the reference's checkpoints: plain state dicts saved with torch.save."""
    folder = root / name
    folder.mkdir(parents=True)
    torch.save(ema, folder / "nnet_ema.pth")
    if online is not None:
        torch.save(online, folder / "nnet.pth")
    return folder


def max_error(a, b) -> float:
    return (a - b).abs().max().item()


def load(path) -> EPGPipeline:
    pipe = EPGPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_diffusion_checkpoint_reproduces_the_reference(tmp_path, reference):
    dm, cm = reference["sub"]("tiny32/dm/"), reference["sub"]("tiny32/cm/")
    source = reference_folder(tmp_path, "run", ema=dm, online=cm)  # nnet_ema.pth wins, as in the reference
    result = convert(source, tmp_path / "out", kind="diffusion", guidance_scale=2.5, **TINY_ARCH)
    assert result.checkpoint.name == "nnet_ema.pth" and result.kind == "diffusion" and result.class_conditional
    names = {str(p.relative_to(result.output_dir)) for p in result.output_dir.rglob("*") if p.is_file()}
    assert names == {"README.md", "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
                     "transformer/diffusion_pytorch_model.safetensors", "transformer/diffusion_pytorch_model.fp16.safetensors",
                     "pipeline_epg.py", "transformer/transformer_epg.py", "scheduler/scheduling_epg_heun.py"}

    pipe = load(result.output_dir)
    assert type(pipe.scheduler) is EPGHeunScheduler and pipe.scheduler.config.prediction_type == "sample"
    assert pipe.transformer.config.num_classes == 10 and pipe.config.default_num_inference_steps == 32
    forward = reference["sub"]("tiny32/forward/")
    with torch.no_grad():
        output = pipe.transformer(forward["net_input"], forward["net_time"], forward["y"]).sample
    assert max_error(output, forward["dm_output"]) <= FORWARD_TOL

    heun, meta = reference["sub"]("tiny32/heun/"), reference["meta"]["heun"]
    out = pipe(class_labels=heun["y"], num_inference_steps=meta["steps"], latents=heun["noise"], output_type="latent")
    assert out.num_network_evaluations == meta["network_evaluations_per_image"]  # guidance 2.5 in (0.19, 1.61] by default
    assert max_error(out.images, heun["sample"]) <= SAMPLE_TOL

    half = EPGPipeline.from_pretrained(result.output_dir, variant="fp16", dtype=torch.float16)
    assert half.transformer.dtype == torch.float16
    pipe.scheduler.set_timesteps(32)  # the card's count for the stored defaults: 62 + 2 per guided grid point
    evaluations = len(pipe.scheduler.timesteps) + sum(pipe.guided_steps(2.5, (0.19, 1.61)))
    assert f"print(out.num_network_evaluations)  # {evaluations}" in (result.output_dir / "README.md").read_text()


def test_onestep_folder_is_a_consistency_model_and_reproduces_the_reference(tmp_path, reference):
    source = reference_folder(tmp_path, "my-EPG-onestep", ema=reference["sub"]("tiny32/cm/"))
    assert cli.main(["convert", str(source), str(tmp_path / "out"), "--no-fp16-variant",
                     *[f"--{k.replace('_', '-')}={v}" for k, v in TINY_ARCH.items()]]) == 0
    assert not list((tmp_path / "out").rglob("*.fp16.safetensors"))
    pipe = load(tmp_path / "out")
    assert type(pipe.scheduler) is EPGConsistencyScheduler
    assert pipe.scheduler.config.prediction_type == "boundary_condition"
    forward = reference["sub"]("tiny32/forward/")
    with torch.no_grad():
        output = pipe.transformer(forward["net_input"], forward["net_time"], forward["y"]).sample
    assert max_error(output, forward["cm_output"]) <= FORWARD_TOL
    heun = reference["sub"]("tiny32/heun/")
    out = pipe(class_labels=heun["y"], latents=heun["noise"], output_type="latent")  # one step by default
    assert out.num_network_evaluations == 1
    assert max_error(out.images, reference["tensors"]["tiny32/onestep/sample"]) <= SAMPLE_TOL


def test_encoder_checkpoint_becomes_the_model_alone(tmp_path, reference):
    source = tmp_path / "RCM-tiny"
    source.mkdir()
    torch.save(reference["sub"]("tiny32/rcm_online/"), source / "nnet.pth")  # pre-training folders hold nnet.pth
    result = convert(source, tmp_path / "out", sample_size=32, patch_size=4, depth=2, embed_dim=64, num_heads=4)
    assert result.kind == "encoder" and not (result.output_dir / "model_index.json").exists()
    model = RCMEncoderModel.from_pretrained(result.output_dir)
    assert (model.config.projector_hidden_dim, model.config.projector_dim) == (128, 32)  # read from the weights
    forward = reference["sub"]("tiny32/forward/")
    with torch.no_grad():
        output = model(forward["net_input"], forward["net_time"])
    assert max_error(output.projection, forward["rcm_eval_projection"]) <= FORWARD_TOL
    assert max_error(output.features, forward["rcm_eval_feature"]) <= FORWARD_TOL
    assert 'RCMEncoderModel.from_pretrained("' in (result.output_dir / "README.md").read_text()


def test_unconditional_generator_gets_a_zero_class_embedding(tmp_path, reference):
    cm = reference["sub"]("tiny32/cm/")
    unconditional = {k: v for k, v in cm.items() if k != "class_embed.weight"}
    source = reference_folder(tmp_path, "uncond", ema=unconditional)
    with pytest.raises(ValueError, match="`num_classes`=10, but the checkpoint has no class_embed.weight"):
        convert(source, tmp_path / "bad", kind="consistency", num_classes=10, **TINY_ARCH)
    result = convert(source, tmp_path / "out", kind="consistency", **TINY_ARCH)
    assert not result.class_conditional
    pipe = load(result.output_dir)
    assert pipe.transformer.config.num_classes == 1 and pipe.config.id2label == {0: "unconditional"}
    assert "unconditional" in (result.output_dir / "README.md").read_text()
    zeroed = EPGTransformer2DModel.from_single_file({**cm, "class_embed.weight": torch.zeros(11, 64)}, **TINY_ARCH,
                                                    num_classes=10)
    forward = reference["sub"]("tiny32/forward/")
    with torch.no_grad():
        a = pipe.transformer(forward["net_input"], forward["net_time"], torch.zeros(4, dtype=torch.long)).sample
        b = zeroed(forward["net_input"], forward["net_time"], forward["y"]).sample
    assert max_error(a, b) <= FORWARD_TOL


def test_published_folder_names_give_preset_kind_and_sampling_settings(tmp_path, reference):
    source = reference_folder(tmp_path, "EPG-XL16-imagenet256", ema=reference["sub"]("tiny32/dm/"))
    with pytest.raises(ValueError, match=r"does not match `preset`='EPG-XL/16': checkpoint lacks .* first: 'blocks.2"):
        convert(source, tmp_path / "out")  # the folder name picks the XL/16 preset, which the tiny weights miss
    result = convert(source, tmp_path / "out", fp16_variant=False, repo_id="org/EPG-XL16", **TINY_ARCH)  # overrides
    assert result.preset == "EPG-XL/16" and result.kind == "diffusion"
    pipe = load(result.output_dir)
    assert pipe.config.default_guidance_scale == 2.5 and pipe.config.default_guidance_interval == [0.19, 1.61]
    card = (result.output_dir / "README.md").read_text()
    assert "**2.04**" in card and 'EPGPipeline.from_pretrained("org/EPG-XL16")' in card
    front = yaml.safe_load(card.split("---")[1])  # the Hub's front matter: the weights' terms are the reference's
    assert front["license"] == "other" and front["license_link"] == "https://huggingface.co/jiachenlei/EPG"
    assert front["datasets"] == ["ILSVRC/imagenet-1k"] and front["library_name"] == "diffusers"
    assert front["pipeline_tag"] == "unconditional-image-generation" and "class-conditional" in front["tags"]


def test_published_table_matches_presets():
    for name, published in PUBLISHED.items():
        class_name = PRESETS[published.preset][0]
        assert (class_name == "RCMEncoderModel") == (published.kind == "encoder"), name
    assert PUBLISHED["EPG-L16-imagenet256-onestep"].kind == "consistency"
    assert PUBLISHED["EPG-L32-imagenet512"].guidance_scale == 3.2


class RunsCode:
    """Pickles into a call of os.mkdir: loading it would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_truncated_and_code_carrying_files_are_refused_without_running(tmp_path, reference):
    folder = reference_folder(tmp_path, "truncated", ema=reference["sub"]("tiny32/dm/"))
    data = (folder / "nnet_ema.pth").read_bytes()
    (folder / "nnet_ema.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint .* as a weights-only state dict"):
        convert(folder, tmp_path / "out", kind="diffusion", **TINY_ARCH)
    marker = tmp_path / "code-ran"
    folder = reference_folder(tmp_path, "evil", ema={"pos_embed": RunsCode(marker)})
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        convert(folder, tmp_path / "out", kind="diffusion", **TINY_ARCH)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="diffusion", preset="EPG-S/16"), r"does not match `preset`='EPG-S/16': checkpoint lacks"),
        (dict(kind="diffusion", preset="RCM-B/16"), "`preset`='RCM-B/16' describes a RCMEncoderModel, but the checkpoint is a diffusion"),
        (dict(kind="diffusion", preset="EPG-XL"), "unknown preset 'EPG-XL'"),
        (dict(kind="encoder"), r"`kind`='encoder', but the checkpoint is an EPG generator"),
        (dict(kind="latent"), "`kind` must be one of"),
        (dict(kind="diffusion"), r"pass `preset` \(--preset"),
        (dict(), "a diffusion and a consistency checkpoint have the same keys; pass `kind`"),
        (dict(kind="diffusion", **{**TINY_ARCH, "embed_dim": 32}), "shape mismatch for"),
        (dict(kind="diffusion", decoder_width=96), "has no architecture argument 'decoder_width'"),
        (dict(kind="diffusion", weights="online", **TINY_ARCH), r"holds no nnet.pth"),
    ],
)
def test_bad_conversions_name_the_problem(tmp_path, reference, kwargs, message):
    source = reference_folder(tmp_path, "run", ema=reference["sub"]("tiny32/dm/"))
    with pytest.raises(ValueError, match=message):
        convert(source, tmp_path / "out", **kwargs)


def test_output_folder_is_not_overwritten_by_accident(tmp_path, reference):
    source = reference_folder(tmp_path, "run", ema=reference["sub"]("tiny32/dm/"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="`output_dir`=.* is not empty"):
        convert(source, tmp_path / "out", kind="diffusion", **TINY_ARCH)
    convert(source, tmp_path / "out", kind="diffusion", overwrite=True, fp16_variant=False, **TINY_ARCH)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model_index.json").exists()
