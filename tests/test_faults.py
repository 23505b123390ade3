"""Fault injection: a training run killed (SIGKILL) at each moment of a checkpoint save resumes with `latest` and
ends with the weights of an uninterrupted run; broken checkpoints are skipped, named, and never rotated away alone.

The kill lands deterministically: ``EPG_TEST_PAUSE_AT=<point>@<step>`` makes the run wait at that point of
``save_checkpoint`` (epg_diffusers/training/runner.py) until the test kills it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from epg_diffusers.training import runner

from .test_pretraining import ROOT, SUBPROCESS_ENV, TINY_ENCODER, metrics, run_rcm

COMMON = ["--max_train_steps", "4", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--log_every", "1",
          "--diagnostic_every", "100"]


def encoder_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "encoder" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted")
    run_rcm(*COMMON, "--output_dir", str(run))
    return run


def kill_at(point: str, step: int, run: Path, tmp_path: Path) -> None:
    """Start the run, wait until it pauses at ``point`` of the save at ``step``, SIGKILL it there."""
    pause = tmp_path / f"paused-{point}"
    command = [sys.executable, str(ROOT / "training" / "train_rcm.py"), "--preset", "RCM-tiny/digits", "--model_config",
               TINY_ENCODER, "--train_batch_size", "16", "--report_to", "none", *COMMON, "--output_dir", str(run)]
    env = {**SUBPROCESS_ENV, runner.PAUSE_AT: f"{point}@{step}", runner.PAUSE_FILE: str(pause)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not pause.exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"the run never reached {point}@{step}"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["save-state", "state-written", "marked", "renamed"])
def test_killed_inside_a_checkpoint_save_resumes_exactly(uninterrupted, tmp_path, point):
    run = tmp_path / "run"
    kill_at(point, 3, run, tmp_path)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    if point in ("save-state", "state-written", "marked"):  # the step-3 save never became checkpoint-3
        assert names == [".checkpoint-3.partial", "checkpoint-1", "checkpoint-2"]
    else:  # renamed, killed before rotation: three complete checkpoints for a limit of two
        assert names == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    result = run_rcm(*COMMON, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    resumed_from = 3 if point == "renamed" else 2
    assert f"resumed from {run / 'checkpoints' / f'checkpoint-{resumed_from}'} at step {resumed_from}" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    expected, got = encoder_weights(uninterrupted), encoder_weights(run)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert [row["step"] for row in metrics(run)] == [1, 2, 3, 4]  # each step once, whatever was logged twice
    assert [row["loss"] for row in metrics(run)] == [row["loss"] for row in metrics(uninterrupted)]


def test_latest_skips_broken_checkpoints_and_says_why(uninterrupted, tmp_path):
    run = tmp_path / "run"
    run_rcm(*COMMON, "--output_dir", str(run), "--max_steps_per_run", "2")  # checkpoint-1 and checkpoint-2
    newest = run / "checkpoints" / "checkpoint-2"
    (newest / "model.safetensors").write_bytes((newest / "model.safetensors").read_bytes()[:100])  # truncated
    empty = run / "checkpoints" / "checkpoint-3"  # as an earlier version left a killed save: no state file
    empty.mkdir()
    result = run_rcm(*COMMON, "--output_dir", str(run), "--resume_from_checkpoint", "latest")
    assert f"skipping {empty}: it has no train_state.json (a save that did not finish)" in result.stderr
    assert f"skipping {newest}: model.safetensors has 100 bytes where" in result.stderr
    assert f"resumed from {run / 'checkpoints' / 'checkpoint-1'} at step 1" in result.stderr
    expected, got = encoder_weights(uninterrupted), encoder_weights(run)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_no_complete_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "train_state.json").write_text("")  # 0 bytes, as a killed write
    result = run_rcm(*COMMON, "--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest", check=False)
    assert result.returncode != 0 and "none of the 1 checkpoints in" in result.stderr
    assert "its train_state.json is unreadable" in result.stderr and not (tmp_path / "metrics.jsonl").exists()


def test_rotation_keeps_complete_checkpoints_only_and_never_the_last_one_away(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = runner.TrainState()
    for step in (1, 2):
        state.step = step
        runner.save_checkpoint(accelerator, str(tmp_path), state, total_limit=1)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2"]
    (folder / "checkpoint-2" / "optimizer.bin").write_bytes(b"")  # damaged after it was saved
    state.step = 3
    runner.save_checkpoint(accelerator, str(tmp_path), state, total_limit=1)  # the damaged one is not counted
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert runner.checkpoint_problem(folder / "checkpoint-3") is None
    assert "optimizer.bin has 0 bytes" in runner.checkpoint_problem(folder / "checkpoint-2")
    assert runner.resolve_resume("latest", str(tmp_path)).name == "checkpoint-3"


def test_metrics_of_a_resumed_run_keep_each_step_once(tmp_path):
    lines = [json.dumps({"step": s, "loss": s}) for s in (1, 2, 3)] + ['{"step": 4, "lo']  # a torn last line
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    runner.truncate_metrics(str(tmp_path), 2)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
