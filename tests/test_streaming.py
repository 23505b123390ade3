"""``--streaming``: a local parquet data set read as a stream, split among processes and DataLoader workers, each
example read once per epoch, and a two-process run killed inside a checkpoint save resuming exactly."""

import os
import signal
import subprocess
import time

import pytest
import torch
from datasets import Image, Value
from safetensors.torch import load_file

from epg_diffusers.training import runner
from epg_diffusers.training.data import clean_view, digits_dataset
from epg_diffusers.training.streaming import StreamingImages, as_is, is_end, load_streaming_dataset

from .test_multiprocess import LAUNCH
from .test_pretraining import ROOT, SUBPROCESS_ENV, TINY_ENCODER, metrics


def numbered_stream(num_examples: int, num_shards: int):
    """Digits whose label is their index, as a stream of ``num_shards`` shards, images as bytes (as streamed)."""
    table = digits_dataset(16).select(range(num_examples)).cast_column("label", Value("int64"))
    table = table.map(lambda row, i: {"label": i}, with_indices=True)
    return table.to_iterable_dataset(num_shards=num_shards).cast_column("image", Image(decode=False))


def read_epoch(stream, rank, world, workers, epoch, batch_size=5, skip=0) -> list[list[int]]:
    """The micro-batches (as lists of example indices) one process reads in ``epoch``, up to its first end marker."""
    data = StreamingImages(stream, {"x0": clean_view(16, False)}, 0, batch_size, rank, world, buffer_size=16)
    data.resume_epoch(epoch, skip)
    batches = []
    for batch in torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers, collate_fn=as_is):
        if is_end(batch):
            break
        assert batch["x0"].shape == (batch_size, 3, 16, 16)
        batches.append(batch["label"].tolist())
    return batches


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 0), (2, 2)])
def test_every_example_is_read_once_per_epoch(world, workers):
    """Equal shards (4 x 25 examples, batches of 5): the processes' epochs cover the data set exactly once."""
    stream = numbered_stream(100, 4)
    orders = []
    for epoch in (0, 1):
        read = [i for rank in range(world) for batch in read_epoch(stream, rank, world, workers, epoch) for i in batch]
        assert sorted(read) == list(range(100))
        orders.append(read)
    assert orders[0] != orders[1]  # each epoch reshuffled


def test_unequal_streams_read_each_example_at_most_once():
    """5 shards for 2 processes x 2 workers: streams of unequal length; nothing is read twice."""
    stream = numbered_stream(100, 5)
    read = [i for rank in range(2) for batch in read_epoch(stream, rank, 2, 2, 0, batch_size=4) for i in batch]
    assert len(read) == len(set(read)) and len(read) >= 60


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_continues_the_same_order(workers):
    stream = numbered_stream(100, 4)
    full = read_epoch(stream, 1, 2, workers, epoch=1)
    for skip in (1, 2, 3):
        assert read_epoch(stream, 1, 2, workers, epoch=1, skip=skip) == full[skip:]


def test_local_shards_and_bad_names(tmp_path):
    table = digits_dataset(16).select(range(30))
    for i in range(3):
        table.shard(3, i, contiguous=True).to_parquet(tmp_path / f"train-{i:05d}.parquet")
    stream = load_streaming_dataset(str(tmp_path))
    assert stream.n_shards == 3 and sorted(r["label"] for r in stream) == sorted(table["label"])
    assert set(next(iter(stream))["image"]) == {"bytes", "path"}  # decoded by the training workers, not here
    with pytest.raises(ValueError, match="no column"):
        load_streaming_dataset(str(tmp_path), label_column="class")
    with pytest.raises(ValueError, match="cannot stream data set `dataset_name`='/no/such/folder-or-id'"):
        load_streaming_dataset("/no/such/folder-or-id")


def train(output_dir, shards, *args, env=None, **popen):
    command = [*LAUNCH, str(ROOT / "training" / "train_rcm.py"), "--preset", "RCM-tiny/digits", "--model_config",
               TINY_ENCODER, "--train_batch_size", "8", "--report_to", "none", "--streaming", "--dataset_name",
               str(shards), "--dataloader_num_workers", "2", "--shuffle_buffer_size", "20", "--max_train_steps", "12",
               "--checkpointing_steps", "1", "--log_every", "1", "--diagnostic_every", "100", "--output_dir",
               str(output_dir), *args]
    return subprocess.Popen(command, cwd=ROOT, env={**SUBPROCESS_ENV, **(env or {})}, **popen)


def test_two_processes_killed_in_a_save_resume_exactly(tmp_path):
    """100 examples in 5 parquet shards, 2 processes x 2 workers, 16 images a step: an epoch is 4-6 steps, so 12
    steps cross epochs. The run is killed (SIGKILL to every process) inside the save of step 7, mid-epoch."""
    shards = tmp_path / "shards"
    shards.mkdir()
    table = digits_dataset(16).select(range(100))
    for i in range(5):
        table.shard(5, i, contiguous=True).to_parquet(shards / f"train-{i:05d}.parquet")
    assert train(tmp_path / "full", shards, stderr=subprocess.DEVNULL).wait(timeout=600) == 0

    run, pause = tmp_path / "killed", tmp_path / "paused"
    process = train(run, shards, env={runner.PAUSE_AT: "marked@7", runner.PAUSE_FILE: str(pause)},
                    stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not pause.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run never reached its save of step 7"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both processes at once, as a lost node
    process.wait()
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ".checkpoint-7.partial" in left and "checkpoint-7" not in left, left  # killed inside the save of step 7
    resumed = train(run, shards, "--resume_from_checkpoint", "latest", stderr=subprocess.PIPE, text=True)
    _, log = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed from" in log and "checkpoint-6 at step 6" in log

    full, killed = metrics(tmp_path / "full"), metrics(run)
    assert [row["step"] for row in killed] == list(range(1, 13))
    assert [row["loss"] for row in killed] == [row["loss"] for row in full]
    expected, got = (load_file(r / "encoder" / "diffusion_pytorch_model.safetensors") for r in (tmp_path / "full", run))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
