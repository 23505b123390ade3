"""Real two-process runs on CPU: ``accelerate launch --multi_gpu --num_processes 2`` starts torchrun, and
with no GPU the processes use the gloo backend (``--cpu`` alone would start a single process)."""

import json
import subprocess
import sys

import torch

from epg_diffusers import RCMEncoderModel
from epg_diffusers import sigmas as sm
from epg_diffusers.training.objectives import rcm_pretrain_loss

from .test_pretraining import ROOT, SUBPROCESS_ENV, metrics, run_rcm

LAUNCH = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no")


def test_negatives_span_the_global_batch(reference, tmp_path):
    out = tmp_path / "loss.json"
    result = subprocess.run([*LAUNCH, str(ROOT / "tests" / "scripts" / "rcm_loss_two_processes.py"), str(out)],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    two = json.loads(out.read_text())
    assert two["processes"] == 2
    online, target = (RCMEncoderModel.from_single_file(reference["sub"](f"tiny32/{n}/"), **reference["encoder_config"])
                      for n in ("rcm_online", "rcm_target"))
    data = reference["sub"]("tiny32/pretrain/")
    grid = sm.karras_sigmas(21) * 0.5
    with torch.no_grad():
        one = rcm_pretrain_loss(online, target, data["x_start"], data["x_aug1"], data["x_aug2"], data["noise"],
                                (grid[-1], grid[7], grid[8]))["loss"]
    assert torch.allclose(torch.tensor(two["loss"]), one, atol=1e-5)
    # with only the local half as negatives the loss would be smaller: the test can tell the difference
    assert not torch.allclose(torch.tensor(two["loss"]), one - 1.0, atol=0.5)


def test_two_process_fine_tuning_evaluates_and_exports(tmp_path):
    """In-training evaluation samples on both processes (as epg sample does) and the main process scores it; the
    checkpoint's EMA pipeline is written once."""
    from epg_diffusers import EPGPipeline

    from .test_finetuning import run_epg

    run_rcm("--max_train_steps", "1", "--output_dir", str(tmp_path / "rcm"))
    run = tmp_path / "epg"
    run_epg("EPG-tiny/digits-diffusion", "--encoder", str(tmp_path / "rcm" / "encoder"), "--train_batch_size", "8",
            "--max_train_steps", "2", "--checkpointing_steps", "2", "--eval_every", "2", "--eval_num_samples", "20",
            "--eval_batch_size", "4", "--validation_steps", "100", "--output_dir", str(run), launcher=LAUNCH)
    (row,) = [row for row in metrics(run) if "eval/classifier_accuracy" in row]
    assert row["step"] == 2 and row["eval/num_samples"] == 20
    settings = json.loads((run / "eval" / "step-0000002" / "settings.json").read_text())
    assert settings["num_processes"] == 2 and settings["status"] == "complete"
    pipe = EPGPipeline.from_pretrained(run / "checkpoints" / "checkpoint-2" / "pipeline")
    assert pipe(class_labels=[3], num_inference_steps=2, output_type="np").images.shape == (1, 16, 16, 3)


def test_two_process_training_run_checkpoints_and_exports(tmp_path):
    result = run_rcm("--max_train_steps", "2", "--checkpointing_steps", "1", "--log_every", "1",
                     "--diagnostic_every", "2", "--train_batch_size", "8", "--output_dir", str(tmp_path), launcher=LAUNCH)
    rows = metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 2] and all(row["loss"] > 0 for row in rows)
    # --train_batch_size is per device: two processes train on 16 images a step, and the log says so
    assert "batch: 8 per device x 1 accumulation steps x 2 processes = 16 images per step" in result.stderr
    assert result.stderr.count("images per step") == 1  # accelerate's logger: the main process alone logs
    assert all(row["images_per_step"] == 16 for row in rows)
    config = json.loads((tmp_path / "run_config.json").read_text())
    assert (config["train_batch_size"], config["global_batch_size"], config["num_processes"]) == (8, 16, 2)
    assert (tmp_path / "checkpoints" / "checkpoint-2" / "random_states_1.pkl").is_file()  # both processes saved
    assert RCMEncoderModel.from_pretrained(tmp_path / "encoder").config.depth == 2


def test_fsdp2_with_the_wrapping_policy_of_the_fsdp_config(tmp_path):
    """accelerate turns FSDP on only on accelerators, so on CPU torch's FSDP2 is applied directly with
    training/accelerate/fsdp.yaml's policy (tests/scripts/fsdp_two_processes.py): two gloo processes train a tiny
    generator with the diffusion objective on half a batch each, and the weights and the sharded EMA (saved,
    loaded, made into a model by training/ema.py) match one process on the whole batch."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               str(ROOT / "tests" / "scripts" / "fsdp_two_processes.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=SUBPROCESS_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["wrapped"] == ["EPGEncoderBlock", "EPGDecoderBlock"] and found["units"] == 5
    assert found["weights_error"] < 1e-5 and found["ema_error"] < 1e-5
