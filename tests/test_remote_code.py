"""Folders this project writes load with diffusers alone (``trust_remote_code=True``), in a venv without this package.

The code files are generated from the package (epg_diffusers/remote_code.py); the venv test loads folders written
by `epg convert` and by a training export, and a repo pushed to a mocked Hub from an offline cache, and compares
every image with EPGPipeline's (1e-5).
"""

import ast
import hashlib
import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache  # the cache's own file listing
from huggingface_hub.utils import filter_repo_objects

from epg_diffusers import (
    EPGEDMSDEScheduler,
    EPGHeunScheduler,
    EPGPipeline,
    EPGTransformer2DModel,
    EPGUniPCMultistepScheduler,
    hub,
)
from epg_diffusers.conversion import convert
from epg_diffusers.remote_code import BUNDLES, bundle_source, package_entries

from .conftest import TINY_LABELS, tiny_pipeline, tiny_transformer
from .fresh_env import fresh_venv, installed, pip_install, run
from .test_conversion import TINY_ARCH, reference_folder
from .test_finetuning import run_epg
from .test_hub import COMMIT, populate_cache

ROOT = Path(__file__).parent.parent
SCRIPT = Path(__file__).parent / "scripts" / "diffusers_alone.py"
CODE = {"EPGPipeline": "pipeline_epg.py", "EPGTransformer2DModel": "transformer/transformer_epg.py",
        "EPGHeunScheduler": "scheduler/scheduling_epg_heun.py",
        "EPGConsistencyScheduler": "scheduler/scheduling_epg_consistency.py"}


def test_generated_files_are_self_contained_package_code():
    for class_name, bundle in BUNDLES.items():
        text = bundle_source(class_name)
        tree = ast.parse(text)
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.level or "epg_diffusers" in n.module)]
        assert class_name in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        for module in bundle.modules:  # every function of the package modules it is made from is in it, verbatim
            source = (ROOT / "epg_diffusers" / f"{module.replace('.', '/')}.py").read_text()
            for node in ast.parse(source).body:
                if isinstance(node, ast.FunctionDef):
                    assert ast.get_source_segment(source, node) in text


@pytest.mark.parametrize("name", ["epg-digits-diffusion", "epg-digits-consistency"])
def test_shipped_pipelines_carry_the_current_generated_code(name):
    """The code in pipelines/ is what the package generates now (regenerate: save the pipeline again)."""
    folder = ROOT / "pipelines" / name
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_epg", "EPGPipeline"]
    for key in ("_class_name", "transformer", "scheduler"):
        class_name = index[key][1]
        assert (folder / CODE[class_name]).read_text() == bundle_source(class_name), (
            f"{name}/{CODE[class_name]} is stale: python -c 'from epg_diffusers.remote_code import write_remote_code; "
            f"write_remote_code(\"pipelines/{name}\")'")


def earlier_version_folder(pipe, folder: Path) -> dict:
    """``pipe`` saved as versions before the generated code did: module paths, no .py files; the index."""
    pipe.save_pretrained(folder)
    for code in folder.rglob("*.py"):
        code.unlink()
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name="EPGPipeline", transformer=["epg_diffusers.models.transformer_epg", "EPGTransformer2DModel"],
                 scheduler=["epg_diffusers.schedulers.scheduling_epg_heun", "EPGHeunScheduler"])
    (folder / "model_index.json").write_text(json.dumps(index))
    return index


def test_a_folder_of_an_earlier_version_still_loads(tmp_path):
    pipe = tiny_pipeline()
    index = earlier_version_folder(pipe, tmp_path)
    loaded = EPGPipeline.from_pretrained(tmp_path)
    assert type(loaded.transformer) is EPGTransformer2DModel and type(loaded.scheduler) is EPGHeunScheduler
    kwargs = dict(class_labels=[1, 2], num_inference_steps=3, output_type="pt")
    expected = pipe(generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images
    torch.testing.assert_close(loaded(generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images,
                               expected, rtol=0, atol=0)
    assert package_entries(dict(index)) == index  # nothing to map back


def test_pushing_a_folder_of_an_earlier_version_adds_the_code(tmp_path, monkeypatch):
    hub_api = MockHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "HfApi", mock.Mock(return_value=hub_api.api))
    earlier_version_folder(tiny_pipeline(), tmp_path / "old")
    hub.push_to_hub(tmp_path / "old", "org/old")
    for code in set(CODE.values()) - {CODE["EPGConsistencyScheduler"]}:
        assert (tmp_path / "hub" / "org" / "old" / code).read_text() == (tmp_path / "old" / code).read_text()
    assert json.loads((tmp_path / "hub" / "org" / "old" / "model_index.json").read_text())["_class_name"] == [
        "pipeline_epg", "EPGPipeline"]


def test_epg_pipeline_loads_the_package_classes_from_a_folder_with_code(tmp_path):
    tiny_pipeline(consistency=True).save_pretrained(tmp_path)
    loaded = EPGPipeline.from_pretrained(tmp_path)  # no trust_remote_code needed: the code files are not run
    assert type(loaded).__module__ == "epg_diffusers.pipelines.pipeline_epg"
    assert type(loaded.scheduler).__module__ == "epg_diffusers.schedulers.scheduling_epg_consistency"


@pytest.fixture(scope="module")
def diffusers_alone(tmp_path_factory):
    """A fresh venv with torch and diffusers (and their requirements) but not epg-diffusers: its python."""
    python = fresh_venv(tmp_path_factory.mktemp("venv") / "diffusers-alone")
    pip_install(python, installed("diffusers"))
    return python


def sample_with_diffusers_alone(python, tmp_path, calls: list[dict], env=None) -> list[dict]:
    (tmp_path / "calls.json").write_text(json.dumps(calls))
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), **(env or {})}  # diffusers copies the code files there
    run(python, SCRIPT, tmp_path / "out.pt", tmp_path / "calls.json", cwd=tmp_path, env=env)
    return torch.load(tmp_path / "out.pt")


def sample_with_epg(path, kwargs, seeds) -> torch.Tensor:
    pipe = EPGPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt", **kwargs)


def check_same(results, calls):
    for result, call in zip(results, calls, strict=True):
        expected = sample_with_epg(call["path"], call["kwargs"], call["seeds"])
        assert all(module.startswith("diffusers_modules.") for module in result["modules"])  # the repo's code ran
        torch.testing.assert_close(result["images"], expected.images, rtol=0, atol=1e-5)
        torch.testing.assert_close(result["resaved"], expected.images, rtol=0, atol=1e-5)  # saved, loaded again
        assert result["evaluations"] == expected.num_network_evaluations


def test_diffusers_alone_loads_convert_and_training_exports(tmp_path, reference, diffusers_alone):
    dm, cm = reference["sub"]("tiny32/dm/"), reference["sub"]("tiny32/cm/")
    convert(reference_folder(tmp_path, "dm", ema=dm), tmp_path / "dm-out", kind="diffusion", guidance_scale=2.0,
            **TINY_ARCH)
    convert(reference_folder(tmp_path, "cm", ema=cm), tmp_path / "cm-out", kind="consistency", **TINY_ARCH)
    run_epg("EPG-tiny/digits-diffusion", "--from_scratch", "--max_train_steps", "2", "--output_dir",
            str(tmp_path / "run"), "--validation_steps", "100")
    EPGPipeline(tiny_transformer(), EPGUniPCMultistepScheduler(image_size=16), tiny_transformer(seed=1),
                id2label=TINY_LABELS, default_autoguidance_scale=1.0).save_pretrained(tmp_path / "autoguided")
    churned = tiny_pipeline()
    churned.scheduler = EPGEDMSDEScheduler.from_config(churned.scheduler.config, s_churn=5.0)
    churned.save_pretrained(tmp_path / "churned")
    calls = [
        dict(path=str(tmp_path / "dm-out"), kwargs=dict(class_labels=[3, 1], num_inference_steps=4,
                                                         guidance_interval=[0.0, 1000.0]), seeds=[0, 1]),
        dict(path=str(tmp_path / "cm-out"), kwargs=dict(class_labels=[2, 5], num_inference_steps=2), seeds=[2, 3]),
        dict(path=str(tmp_path / "run" / "pipeline"), kwargs=dict(class_labels=["7", 0], num_inference_steps=3),
             seeds=[4, 5]),
        dict(path=str(tmp_path / "autoguided"), kwargs=dict(class_labels=["goldfish", 2], num_inference_steps=4),
             seeds=[6, 7]),  # diffusers' UniPC through the adapter, autoguidance by the saved weaker model
        dict(path=str(tmp_path / "churned"), kwargs=dict(class_labels=[3, 4], num_inference_steps=5), seeds=[8, 9]),
        # the shipped one-step default: the sample_boundary_condition parameterisation in its generated code
        dict(path=str(ROOT / "pipelines" / "epg-digits-consistency"), kwargs=dict(class_labels=[1, 8]), seeds=[10, 11]),
    ]
    check_same(sample_with_diffusers_alone(diffusers_alone, tmp_path, calls), calls)


class MockHub:
    """A mocked HfApi whose upload_folder copies exactly what a real upload would send into ``root/<repo_id>``."""

    def __init__(self, root: Path):
        self.root, self.api = root, mock.MagicMock()
        self.api.create_repo.side_effect = lambda repo_id, **kwargs: mock.Mock(repo_id=repo_id)
        self.api.upload_folder.side_effect = self.upload

    def upload(self, *, repo_id, folder_path, allow_patterns, ignore_patterns, **kwargs):
        folder = Path(folder_path)
        every = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        for name in filter_repo_objects(every, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (self.root / repo_id / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, self.root / repo_id / name)
        return mock.Mock(commit_url=f"https://hub/{repo_id}/commit")


def test_diffusers_alone_loads_a_pushed_repo_offline_from_the_cache(tmp_path, monkeypatch, diffusers_alone):
    hub_api = MockHub(tmp_path / "hub")
    monkeypatch.setattr(hub, "HfApi", mock.Mock(return_value=hub_api.api))
    tiny_pipeline().push_to_hub("org/epg-tiny")
    repo = tmp_path / "hub" / "org" / "epg-tiny"
    uploaded = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
    assert {"pipeline_epg.py", "transformer/transformer_epg.py", "scheduler/scheduling_epg_heun.py"} <= uploaded
    cache = tmp_path / "cache"
    populate_cache(cache, "org/epg-tiny", repo)
    call = dict(path="org/epg-tiny", kwargs=dict(class_labels=["goldfish", 3], num_inference_steps=3, guidance_scale=2.0,
                                                 guidance_interval=[0.0, 1000.0]), seeds=[0, 1])
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    by_id = sample_with_diffusers_alone(diffusers_alone, tmp_path, [call], env=offline)
    # After an online download the cache also holds the repo's file listing; diffusers 0.42 then asks the Hub for
    # the code's commit even offline, so README and cards load the local snapshot instead: that works offline.
    write_tree_cache(str(cache / "models--org--epg-tiny"), COMMIT, {
        name: TreeCacheEntry(size=(repo / name).stat().st_size, blob_id=hashlib.sha1((repo / name).read_bytes()).hexdigest())
        for name in uploaded})
    by_snapshot = sample_with_diffusers_alone(diffusers_alone, tmp_path, [{**call, "snapshot": True}], env=offline)
    call["path"] = str(repo)  # EPGPipeline on the same files
    check_same(by_id + by_snapshot, [call, call])
