"""Run in a venv without epg-diffusers: load pipelines with diffusers alone and sample them.

    python diffusers_alone.py OUT.pt CALLS.json

CALLS.json lists {"path": folder or repo id, "kwargs": pipeline call arguments, "seeds": [...], "snapshot": bool}
("snapshot": load the repo's local snapshot, `snapshot_download(repo_id)`, rather than the repo id); OUT.pt gets, per
call, the images (output_type "pt"), the network evaluations, the classes' modules, and the images again after a
save_pretrained / from_pretrained round trip of the remote-code pipeline.
"""

import importlib.util
import json
import sys
import tempfile

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import snapshot_download

assert importlib.util.find_spec("epg_diffusers") is None, "epg-diffusers must not be importable here"
out_path, calls_path = sys.argv[1:]
results = []
for call in json.load(open(calls_path)):
    def sample(pipe):
        pipe.set_progress_bar_config(disable=True)
        generator = [torch.Generator().manual_seed(seed) for seed in call["seeds"]]
        return pipe(generator=generator, output_type="pt", **call["kwargs"])

    path = snapshot_download(call["path"]) if call.get("snapshot") else call["path"]
    pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    out = sample(pipe)
    with tempfile.TemporaryDirectory() as folder:
        pipe.save_pretrained(folder)
        again = sample(DiffusionPipeline.from_pretrained(folder, trust_remote_code=True))
    modules = [type(x).__module__ for x in (pipe, pipe.transformer, pipe.scheduler)]
    results.append(dict(images=out.images, evaluations=out.num_network_evaluations, modules=modules,
                        resaved=again.images))
torch.save(results, out_path)
