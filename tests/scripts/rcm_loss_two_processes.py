"""Run under ``accelerate launch --num_processes 2``: the RCM loss of each process's half of a global batch.

Encoders in eval mode (BatchNorm on running statistics), so the only cross-process coupling is the
negatives gathered from every process. Writes the gathered per-sample losses to argv[1].
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from epg_diffusers import RCMEncoderModel
from epg_diffusers import sigmas as sm
from epg_diffusers.training.objectives import rcm_pretrain_loss

DATA = Path(__file__).parent.parent / "data"


def main(out_path: str):
    accelerator = Accelerator(cpu=True)
    tensors = load_file(DATA / "epg_reference_tiny.safetensors")
    config = json.loads((DATA / "epg_reference_tiny.json").read_text())["tiny32"]["rcm_config"]
    config = dict(sample_size=config["image_size"], patch_size=config["patch_size"], depth=config["depth"],
                  embed_dim=config["embed_dim"], num_heads=config["num_heads"],
                  projector_hidden_dim=config["hidden_dim"], projector_dim=config["output_dim"])
    models = [RCMEncoderModel.from_single_file({k.split("/", 2)[2]: v for k, v in tensors.items()
                                                if k.startswith(f"tiny32/{name}/")}, **config)
              for name in ("rcm_online", "rcm_target")]
    rows = slice(2 * accelerator.process_index, 2 * accelerator.process_index + 2)
    batch = [tensors[f"tiny32/pretrain/{k}"][rows] for k in ("x_start", "x_aug1", "x_aug2", "noise")]
    grid = sm.karras_sigmas(21) * 0.5
    with torch.no_grad():
        loss = rcm_pretrain_loss(*models, *batch, (grid[-1], grid[7], grid[8]), gather=accelerator.gather,
                                 offset=2 * accelerator.process_index)["loss"]
    gathered = accelerator.gather(loss)
    if accelerator.is_main_process:
        Path(out_path).write_text(json.dumps({"loss": gathered.tolist(), "processes": accelerator.num_processes}))
    accelerator.end_training()  # destroys the process group: left to interpreter exit, gloo's threads can abort


if __name__ == "__main__":
    main(sys.argv[1])
