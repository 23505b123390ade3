"""The Hub round trip, offline: loading repo ids from a pre-populated cache, model cards, push_to_hub (mocked HfApi)."""

import argparse
import hashlib
import json
import os
import socket
from pathlib import Path
from unittest import mock

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub.utils import filter_repo_objects

from epg_diffusers import EPGHeunScheduler, EPGPipeline, EPGTransformer2DModel, RCMEncoderModel, hub
from epg_diffusers.hub import push_to_hub, save_for_hub
from epg_diffusers.model_card import hub_repo_id, model_card

from .conftest import tiny_pipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PIPELINE_FILES = {"README.md", "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json",
                  "transformer/diffusion_pytorch_model.safetensors", "pipeline_epg.py", "transformer/transformer_epg.py",
                  "scheduler/scheduling_epg_heun.py"}  # the layout and the code that diffusers alone loads


def populate_cache(cache: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> None:
    """Put ``folder`` into a Hugging Face cache as ``repo_id`` at ``commit`` (the documented cache layout:
    blobs named by content hash, snapshot files linking to them, ``refs/main`` naming the commit)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 (environment and huggingface_hub's constant), a private default cache, no sockets."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def sample(pipe: EPGPipeline) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator().manual_seed(i) for i in range(2)]
    return pipe(class_labels=["goldfish", 3], num_inference_steps=3, generator=generator, output_type="latent").images


def test_repo_id_loads_offline_from_the_cache(tmp_path, offline):
    pipe = tiny_pipeline()
    save_for_hub(pipe, tmp_path / "saved", fp16_variant=True)
    populate_cache(offline, "org/epg-tiny", tmp_path / "saved")
    cached = huggingface_hub.scan_cache_dir(offline)  # huggingface_hub reads the layout as a valid cache
    assert [repo.repo_id for repo in cached.repos] == ["org/epg-tiny"] and not cached.warnings

    loaded = EPGPipeline.from_pretrained("org/epg-tiny")
    assert type(loaded.transformer) is EPGTransformer2DModel and type(loaded.scheduler) is EPGHeunScheduler
    assert torch.equal(sample(loaded), sample(pipe))
    assert EPGPipeline.from_pretrained("org/epg-tiny", revision=COMMIT).config.id2label == pipe.config.id2label
    half = EPGPipeline.from_pretrained("org/epg-tiny", variant="fp16", dtype=torch.float16)
    assert half.transformer.dtype == torch.float16
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        EPGPipeline.from_pretrained("org/not-cached")


def test_repo_id_is_resolved_to_a_snapshot_before_diffusers_sees_it(tmp_path, monkeypatch):
    """Online, diffusers' own download step refuses a third-party package's components; the override downloads
    the snapshot itself (here a mocked snapshot_download) and hands diffusers a folder."""
    save_for_hub(tiny_pipeline(), tmp_path / "snapshot")
    fake = mock.Mock(return_value=str(tmp_path / "snapshot"))
    monkeypatch.setattr(hub, "snapshot_download", fake)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    EPGPipeline.from_pretrained("org/name", revision="v1", token="secret")
    (repo_id,), kwargs = fake.call_args
    assert repo_id == "org/name" and kwargs["revision"] == "v1" and kwargs["token"] == "secret"
    assert kwargs["local_files_only"] is False and kwargs["library_name"] == "epg-diffusers"
    assert {"*/*.*.safetensors", "*checkpoint-*", "*optimizer*"} <= set(kwargs["ignore_patterns"])
    hub.snapshot_path("org/name", variant="fp16")
    assert "*/*.*.safetensors" not in fake.call_args.kwargs["ignore_patterns"]  # variant weights wanted


def test_explicit_cache_dir_and_local_files_only(tmp_path, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", mock.Mock(side_effect=AssertionError("network")))
    pipe = tiny_pipeline(consistency=True)
    save_for_hub(pipe, tmp_path / "saved")
    populate_cache(tmp_path / "cache", "org/epg-cm", tmp_path / "saved")
    loaded = EPGPipeline.from_pretrained("org/epg-cm", cache_dir=tmp_path / "cache", local_files_only=True)
    assert torch.equal(sample(loaded), sample(pipe))
    with pytest.raises(ValueError, match="`pretrained_model_name_or_path`='./missing' is neither a folder"):
        EPGPipeline.from_pretrained("./missing")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # diffusers' call
def test_encoder_repo_loads_offline(tmp_path, offline):
    encoder = RCMEncoderModel(sample_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2,
                              projector_hidden_dim=16, projector_dim=8)
    save_for_hub(encoder, tmp_path / "saved")
    populate_cache(offline, "org/rcm-tiny", tmp_path / "saved")
    loaded = RCMEncoderModel.from_pretrained("org/rcm-tiny")
    expected = encoder.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


class Recorder:
    """A mocked HfApi that records what upload_folder would upload (the files that pass its patterns)."""

    def __init__(self):
        self.api = mock.MagicMock()
        self.api.create_repo.return_value = mock.Mock(repo_id="org/name")
        self.api.upload_folder.side_effect = self.upload
        self.files, self.card = None, None

    def upload(self, *, folder_path, allow_patterns, ignore_patterns, **kwargs):
        folder = Path(folder_path)
        every = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        self.files = set(filter_repo_objects(every, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        self.card = (folder / "README.md").read_text()
        self.kwargs = kwargs
        return mock.Mock(commit_url="https://hub/commit")


@pytest.fixture
def hf_api(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(hub, "HfApi", mock.Mock(return_value=recorder.api))
    return recorder


def code_blocks(card: str) -> list[str]:
    return [block.split("```", 1)[0] for block in card.split("```python\n")[1:]]


def check_usage(card: str, repo_id: str):
    """The card's two snippets: diffusers alone (remote code) first, then epg-diffusers; both load ``repo_id``."""
    remote, package = code_blocks(card)[:2]
    assert f'DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)' in remote
    assert f'EPGPipeline.from_pretrained("{repo_id}")' in package and "trust_remote_code" not in package
    assert all("class_labels=" in block for block in (remote, package)) and "prompt" not in card


def test_push_pipeline_uploads_the_layout_and_a_real_card(hf_api):
    pipe = tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    push_to_hub(pipe, "org/name", private=True, fp16_variant=True)
    hf_api.api.create_repo.assert_called_once_with("org/name", private=True, exist_ok=True, repo_type="model")
    assert hf_api.files == PIPELINE_FILES | {"transformer/diffusion_pytorch_model.fp16.safetensors"}
    check_usage(hf_api.card, "org/name")
    assert "library_name: diffusers" in hf_api.card and "pipeline_tag: unconditional-image-generation" in hf_api.card
    assert all(torch.equal(before[k], v) for k, v in pipe.transformer.state_dict().items())  # fp16 copy only


def test_pipeline_push_to_hub_method_uses_the_epg_card(hf_api):
    tiny_pipeline(consistency=True).push_to_hub("org/name", commit_message="first")
    consistency = PIPELINE_FILES - {"scheduler/scheduling_epg_heun.py"} | {"scheduler/scheduling_epg_consistency.py"}
    assert hf_api.files == consistency and hf_api.kwargs["commit_message"] == "first"
    check_usage(hf_api.card, "org/name")


def test_push_training_folder_never_uploads_optimizer_states_or_checkpoints(tmp_path, hf_api):
    folder = tmp_path / "run"
    save_for_hub(tiny_pipeline(), folder)
    junk = ["checkpoint-500/optimizer.bin", "checkpoint-500/model.safetensors", "checkpoint-500/random_states_0.pkl",
            "checkpoint-500/transformer/diffusion_pytorch_model.safetensors", "logs/events.out.tfevents.1.host",
            "transformer_ema/diffusion_pytorch_model.safetensors", "transformer_ema/config.json", "optimizer.pt",
            "nnet.pth", "transformer/diffusion_pytorch_model.bin", "transformer/notes.txt"]
    for name in junk:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (folder / "samples.png").write_bytes(b"png")
    push_to_hub(folder, "org/name", revision="dev", create_pr=True)
    assert hf_api.files == PIPELINE_FILES | {"samples.png"}
    assert hf_api.kwargs["revision"] == "dev" and hf_api.kwargs["create_pr"] is True
    assert (folder / "README.md").is_file()  # the generated card stays with the folder


def test_existing_card_is_pointed_at_the_repo(tmp_path, hf_api):
    save_for_hub(tiny_pipeline(), tmp_path / "out")
    model_card(tmp_path / "out", str(tmp_path / "out"), "Converted from somewhere.").save(tmp_path / "out" / "README.md")
    push_to_hub(tmp_path / "out", "org/name")
    check_usage(hf_api.card, "org/name")
    assert "Converted from somewhere." in hf_api.card
    push_to_hub(tmp_path / "out", "org/name", model_card_text="# custom")
    assert hf_api.card == "# custom"


def test_push_encoder_object(hf_api):
    encoder = RCMEncoderModel(sample_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2,
                              projector_hidden_dim=16, projector_dim=8)
    push_to_hub(encoder, "org/name")
    assert hf_api.files == {"README.md", "config.json", "diffusion_pytorch_model.safetensors"}
    assert 'RCMEncoderModel.from_pretrained("org/name")' in code_blocks(hf_api.card)[0]
    assert "pipeline_tag: image-feature-extraction" in hf_api.card


def test_folders_that_cannot_be_pushed_are_refused_before_any_upload(tmp_path, hf_api):
    with pytest.raises(ValueError, match="neither a pipeline folder .* nor a model folder"):
        push_to_hub(tmp_path, "org/name")
    folder = tmp_path / "pickled"
    tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ValueError, match="has no .safetensors weights"):
        push_to_hub(folder, "org/name")
    hf_api.api.create_repo.assert_not_called()
    hf_api.api.upload_folder.assert_not_called()


def test_card_counts_the_published_network_evaluations(tmp_path):
    transformer = EPGTransformer2DModel(sample_size=256, patch_size=16, depth=1, embed_dim=32, num_heads=2,
                                        decoder_depth=1, decoder_embed_dim=32, decoder_num_heads=2)
    pipe = EPGPipeline(transformer, EPGHeunScheduler(image_size=256), default_num_inference_steps=32,
                       default_guidance_scale=2.5)
    pipe.save_pretrained(tmp_path)
    card = model_card(tmp_path, "org/EPG-XL16").content
    assert "print(out.num_network_evaluations)  # 74" in card  # 62 + 2 x 6 guided grid points, as the reference
    assert 'class_labels=[207, "goldfish"]' in card and "- imagenet" in card
    assert "scale 2.5 for unshifted sigma in (0.19, 1.61]" in card


def test_push_command(tmp_path, hf_api):
    save_for_hub(tiny_pipeline(), tmp_path / "out")
    parser = argparse.ArgumentParser()
    hub.add_arguments(parser)
    assert hub.run(parser.parse_args([str(tmp_path / "out"), "org/name", "--private"])) == 0
    assert hf_api.files == PIPELINE_FILES
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["_class_name"] == ["pipeline_epg", "EPGPipeline"]


def test_card_front_matter_names_data_and_base_model(tmp_path):
    save_for_hub(tiny_pipeline(), tmp_path / "out")
    card = model_card(tmp_path / "out", "org/x", datasets=["org/my-data"], base_model="org/rcm-encoder").content
    front = yaml.safe_load(card.split("---")[1])
    assert front["datasets"] == ["org/my-data"] and front["base_model"] == "org/rcm-encoder"
    assert front["license"] == "apache-2.0" and front["library_name"] == "diffusers"
    assert front["pipeline_tag"] == "unconditional-image-generation" and "class-conditional" in front["tags"]
    assert "datasets" not in yaml.safe_load(model_card(tmp_path / "out", "org/x").content.split("---")[1])
    assert hub_repo_id("ILSVRC/imagenet-1k") == "ILSVRC/imagenet-1k" and hub_repo_id("digits") is None
    assert hub_repo_id(str(tmp_path / "out")) is None  # a local folder, even one shaped like org/name
