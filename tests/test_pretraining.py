"""RCM pre-training: objective parity with the reference, curricula, data, end-to-end runs and resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import Dataset, Features, Image
from safetensors.torch import load_file

from epg_diffusers import RCMEncoderModel
from epg_diffusers import sigmas as sm
from epg_diffusers.training.curricula import cosine_tau2, interpolated_tau, num_scales
from epg_diffusers.training.data import (
    SeededImageDataset,
    adm_center_crop,
    collate_skipping_broken,
    load_image_dataset,
    preprocess,
    rcm_views,
)
from epg_diffusers.training.objectives import collapse_diagnostic, network_inputs, nt_xent, rcm_pretrain_loss

ROOT = Path(__file__).parent.parent
# one OpenMP thread per training process: on 2 shared cores, spinning thread pools slow tiny models 10x
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_ENCODER = '{"sample_size":16,"depth":2,"embed_dim":32,"num_heads":2,"projector_hidden_dim":64,"projector_dim":16}'


@pytest.mark.parametrize("mode", ["constant", "interpolated"])
def test_objective_matches_reference(reference, mode):
    config, shift = reference["meta"]["pretrain"][mode], 0.5
    online = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_online/"), **reference["encoder_config"])
    target = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_target/"), **reference["encoder_config"])
    online.train()  # projector BatchNorm on batch statistics; the momentum encoder stays in eval mode
    data = reference["sub"]("tiny32/pretrain/")
    grid, n = sm.karras_sigmas(config["num_scales_N"]) * shift, config["index_n"]
    tau = 0.1 if mode == "constant" else interpolated_tau(grid[n] / shift, 0.1, config["tmax_tau_consistency"])
    out = rcm_pretrain_loss(
        online, target, data["x_start"], data["x_aug1"], data["x_aug2"], data["noise"], (grid[-1], grid[n], grid[n + 1]),
        consistency_tau=tau,
    )
    for key, fixture in (("loss", "loss"), ("contrastive_loss", "contrastive_loss"), ("consistency_loss", "consistency")):
        assert (out[key] - data[f"{mode}/{fixture}"]).abs().max() <= 1e-5, key


def test_contrastive_tau_is_the_contrastive_temperature(reference, tmp_path):
    """`--contrastive_tau` reaches the loss: the contrastive term is the NT-Xent of the views at that temperature."""
    online = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_online/"), **reference["encoder_config"])
    target = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_target/"), **reference["encoder_config"])
    data, shift = reference["sub"]("tiny32/pretrain/"), 0.5
    grid = sm.karras_sigmas(21) * shift
    args = (online.eval(), target, data["x_start"], data["x_aug1"], data["x_aug2"], data["noise"], (grid[-1], grid[7], grid[8]))
    with torch.no_grad():
        out = rcm_pretrain_loss(*args, contrastive_tau=0.3)
        views = [x + data["noise"] * grid[-1] for x in (data["x_aug1"], data["x_aug2"])]
        p1, p2 = (online(*network_inputs(v, grid[-1]), return_dict=False)[0] for v in views)
        z1, z2 = (target(*network_inputs(v, grid[-1]), return_dict=False)[0] for v in views)
    assert torch.allclose(out["contrastive_loss"], nt_xent(p1, z2, 0.3) + nt_xent(p2, z1, 0.3), atol=1e-6)
    assert not torch.allclose(out["contrastive_loss"], rcm_pretrain_loss(*args)["contrastive_loss"])  # 0.2
    losses = {}
    for tau in ("0.2", "0.3"):  # and the training script passes it on
        run_rcm("--max_train_steps", "1", "--log_every", "1", "--contrastive_tau", tau,
                "--output_dir", str(tmp_path / tau))
        losses[tau] = metrics(tmp_path / tau)[0]["contrastive_loss"]
    assert losses["0.2"] != losses["0.3"]


def test_curriculum_and_tau_schedule_match_reference(reference):
    for row in reference["meta"]["curriculum"]:
        assert num_scales(row["step"], 600_000) == row["N"]
        assert cosine_tau2(row["step"], 600_000) == pytest.approx(row["tau2_cosine"], abs=1e-12)


def test_nt_xent_per_sample_temperature_and_offset():
    torch.manual_seed(0)
    pred, targets = torch.randn(3, 8), torch.randn(6, 8)
    tau = torch.tensor([0.1, 0.2, 0.3])
    loss = nt_xent(pred, targets, tau, offset=3)
    for i in range(3):  # row i: its own temperature, positive = targets[3 + i], negatives = all 6 targets
        logits = torch.nn.functional.cosine_similarity(pred[i : i + 1], targets) / tau[i]
        assert loss[i] == pytest.approx((torch.logsumexp(logits, 0) - logits[3 + i]).item(), abs=1e-5)


def test_adm_center_crop_and_broken_images_are_skipped(tmp_path):
    wide = PIL.Image.new("L", (300, 140), 128)  # grayscale, non-square
    cropped = adm_center_crop(wide.convert("RGB"), 64)
    assert cropped.size == (64, 64) and cropped.mode == "RGB"
    good = PIL.Image.fromarray(np.full((40, 50), 200, np.uint8)).convert("L")
    buffer = __import__("io").BytesIO()
    good.save(buffer, format="PNG")
    rows = {"image": [{"bytes": buffer.getvalue(), "path": None}, {"bytes": b"not an image", "path": None}],
            "label": [0, 1]}
    dataset = Dataset.from_dict(rows, features=Features({"image": Image(decode=False), "label": __import__("datasets").Value("int64")}))
    skipped = preprocess(dataset, 16, str(tmp_path / "pre"))
    assert skipped == 1
    loaded = load_image_dataset(str(tmp_path / "pre"))
    assert len(loaded) == 1 and loaded[0]["image"].size == (16, 16) and loaded[0]["image"].mode == "RGB"


def test_views_are_seeded_per_sample_and_broken_rows_are_replaced():
    digits = load_image_dataset("digits", resolution=16)
    assert len(digits) == 1797 and digits.features["label"].num_classes == 10
    data = SeededImageDataset(digits, rcm_views(16), seed=3)
    a, b = data[5], data[5]
    assert a["view1"].shape == (3, 16, 16) and torch.equal(a["view1"], b["view1"]) and torch.equal(a["x0"], b["x0"])
    assert not torch.equal(a["view1"], a["view2"])
    data.set_epoch(1)
    assert not torch.equal(data[5]["view1"], a["view1"])
    batch = collate_skipping_broken([a, {"valid": False, "label": 1}, data[6]])
    assert batch["x0"].shape == (3, 3, 16, 16) and batch["broken"] == 1


def test_unknown_data_set_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot load data set `dataset_name`='/no/such/dir-or-hub-id'"):
        load_image_dataset("/no/such/dir-or-hub-id")


def run_rcm(*args, launcher=(sys.executable,), check=True, timeout=600):
    batch = [] if {"--train_batch_size", "--global_batch_size"} & set(args) else ["--train_batch_size", "16"]
    command = [*launcher, str(ROOT / "training" / "train_rcm.py"), "--preset", "RCM-tiny/digits",
               "--model_config", TINY_ENCODER, *batch, "--report_to", "none", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=SUBPROCESS_ENV)
    if check and result.returncode:
        raise AssertionError(result.stderr[-3000:])
    return result


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_train_checkpoint_and_exact_resume(tmp_path):
    common = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
              "--log_every", "1", "--diagnostic_every", "3"]
    log = run_rcm(*common, "--output_dir", str(tmp_path / "full")).stderr
    run_rcm(*common, "--output_dir", str(tmp_path / "split"), "--max_steps_per_run", "3")
    assert not (tmp_path / "split" / "encoder").exists()  # stopped early: no export yet
    run_rcm(*common, "--output_dir", str(tmp_path / "split"), "--resume_from_checkpoint", "latest")
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    keys = ("loss", "contrastive_loss", "consistency_loss", "lr", "num_scales", "tau")
    assert [[row[k] for k in keys] for row in full] == [[row[k] for k in keys] for row in split]
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    assert "feature_std/sigma_80" in full[2]
    encoder = RCMEncoderModel.from_pretrained(tmp_path / "full" / "encoder")
    assert encoder.config.embed_dim == 32 and (tmp_path / "full" / "encoder" / "README.md").is_file()
    config = json.loads((tmp_path / "full" / "run_config.json").read_text())
    assert config["preset"] == "RCM-tiny/digits"
    # one process: the per-device batch is the global batch (two processes: tests/test_multiprocess.py)
    assert "batch: 16 per device x 1 accumulation steps x 1 processes = 16 images per step" in log
    assert (config["train_batch_size"], config["global_batch_size"], config["num_processes"]) == (16, 16, 1)
    assert all(row["images_per_step"] == 16 for row in full)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "RCM-Q/16"], "unknown `preset` 'RCM-Q/16'"),
        (["--dataset_name", "/no/such/data"], "cannot load data set"),
        (["--global_batch_size", "15", "--gradient_accumulation_steps", "2"], "is not divisible by processes x accumulation"),
        (["--train_batch_size", "0"], "`train_batch_size` (per device) must be >= 1"),
        (["--train_batch_size", "8", "--global_batch_size", "16"], "give `--train_batch_size` (per device) or"),
        (["--seed", "-1"], "`--seed` must be >= 0"),
        (["--resume_from_checkpoint", "/no/such/checkpoint"], "is not a complete checkpoint folder"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, args, message):
    result = run_rcm("--max_train_steps", "2", "--output_dir", str(tmp_path), *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_unreadable_checkpoint_fails_before_training(tmp_path):
    broken = tmp_path / "checkpoints" / "checkpoint-2"
    broken.mkdir(parents=True)
    (broken / "train_state.json").write_text('{"step": 2, "epoch": 0}')
    (broken / "model.safetensors").write_bytes(b"garbage")
    result = run_rcm("--max_train_steps", "4", "--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest",
                     check=False)
    assert result.returncode != 0 and "cannot resume from checkpoint" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_dry_run_prints_resolved_recipe(tmp_path):
    out = run_rcm("--dry_run", "--output_dir", str(tmp_path), "--learning_rate", "0.5").stdout
    config = json.loads(out)
    assert config["learning_rate"] == 0.5 and config["momentum"] == 0.99 and config["dataset_name"] == "digits"


@pytest.mark.parametrize(
    "args, world_size, per_device, total",
    [
        ([], 1, 64, 64),  # the recipe's global batch
        ([], 2, 32, 64),  # ... stays global on two processes
        (["--gradient_accumulation_steps", "4"], 2, 8, 64),
        (["--train_batch_size", "8"], 1, 8, 8),  # per device, as in the diffusers examples
        (["--train_batch_size", "8", "--gradient_accumulation_steps", "2"], 4, 8, 64),
        (["--global_batch_size", "32"], 2, 16, 32),
    ],
)
def test_batch_sizes_per_device_or_global(tmp_path, args, world_size, per_device, total):
    command = [sys.executable, str(ROOT / "training" / "train_rcm.py"), "--preset", "RCM-tiny/digits", "--dry_run",
               "--output_dir", str(tmp_path), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**SUBPROCESS_ENV, "WORLD_SIZE": str(world_size)})
    config = json.loads(result.stdout)
    assert (config["train_batch_size"], config["global_batch_size"], config["num_processes"]) == (
        per_device, total, world_size)


def test_resume_keeps_the_global_batch(tmp_path):
    run_rcm("--max_train_steps", "2", "--max_steps_per_run", "1", "--output_dir", str(tmp_path))
    changed = run_rcm("--max_train_steps", "2", "--resume_from_checkpoint", "latest", "--output_dir", str(tmp_path),
                      "--train_batch_size", "8", check=False)
    assert changed.returncode != 0
    assert "resuming with a global batch of 8" in changed.stderr and "--global_batch_size 16" in changed.stderr
    assert [row["step"] for row in metrics(tmp_path)] == [1]  # nothing trained, nothing lost
    run_rcm("--max_train_steps", "2", "--resume_from_checkpoint", "latest", "--output_dir", str(tmp_path),
            "--global_batch_size", "16")
    assert [row["step"] for row in metrics(tmp_path)] == [1, 2]


@pytest.mark.parametrize("statistics", ["initial", "online"])
def test_momentum_encoder_batchnorm_statistics(tmp_path, statistics):
    """``initial``: the momentum encoder normalises with mean 0 / var 1 forever (the reference); ``online``: with the
    online encoder's running statistics, copied after every update."""
    run_rcm("--max_train_steps", "2", "--checkpointing_steps", "2", "--momentum_bn_statistics", statistics,
            "--output_dir", str(tmp_path))
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    target = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)  # [lr_scheduler, target]
    online = load_file(checkpoint / "model.safetensors")
    names = [k for k in online if "running_" in k]
    assert len(names) == 4
    for name in names:
        if statistics == "initial":
            expected = torch.zeros_like(online[name]) if "mean" in name else torch.ones_like(online[name])
        else:
            expected = online[name]
            assert not torch.equal(expected, torch.zeros_like(expected) if "mean" in name else torch.ones_like(expected))
        assert torch.equal(target[f"module.{name}"], expected), name


def test_collapse_diagnostic_leaves_the_training_state_alone():
    encoder = RCMEncoderModel.from_config(json.loads(TINY_ENCODER)).train()
    x0 = torch.randn(8, 3, 16, 16)
    encoder(*network_inputs(x0, torch.full((8,), 1.0)))  # running statistics away from their initial values
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    stds = collapse_diagnostic(encoder, x0, shift=1.0)
    assert set(stds) == {0.002, 0.1, 1.0, 10.0, 80.0} and encoder.training
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
