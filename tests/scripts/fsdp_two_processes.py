"""Run by tests/test_multiprocess.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

accelerate enables FSDP only on accelerators, so this applies torch's FSDP2 (``fully_shard``) itself, with the
wrapping policy of ``training/accelerate/fsdp.yaml`` (every module of the listed classes a unit, then the root, as
accelerate's FSDP2 preparation does), to a tiny generator; trains it for three steps with the diffusion objective
on half of the batch per process, with the EMA of training/ema.py over the sharded parameters; and checks the
weights and the EMA against the same steps on the whole batch in one process, then the EMA's save / load round
trip and the EMA model. Prints one JSON line of findings; any failure raises.
"""

import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils.dataclasses import get_module_class_from_name
from diffusers.training_utils import EMAModel
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from epg_diffusers import EPGTransformer2DModel
from epg_diffusers import sigmas as sm
from epg_diffusers.training.ema import ema_model, ema_weights, load_ema, save_ema
from epg_diffusers.training.objectives import DiffusionNoiseLevels, diffusion_loss

CONFIG = Path(__file__).parents[2] / "training" / "accelerate" / "fsdp.yaml"
TINY = dict(sample_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, decoder_depth=2, decoder_embed_dim=32,
            decoder_num_heads=2, num_classes=10)


def shard(model) -> list[str]:
    """fully_shard every module of the config's wrap classes, then the root; the wrapped class names."""
    fsdp = load_config_from_file(str(CONFIG)).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP", fsdp
    classes = []
    for name in fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","):
        found = get_module_class_from_name(model, name)
        assert found is not None, f"{name} (fsdp.yaml) is not a module of {type(model).__name__}"
        classes.append(found)
    for module in model.modules():
        if isinstance(module, tuple(classes)):
            fully_shard(module, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
    fully_shard(model, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
    return [c.__name__ for c in classes]


def train(model, ema, batches, rank=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    levels = DiffusionNoiseLevels(-1.2, 1.6, sm.resolution_shift(16), grid_size=64)
    for x0, labels, noise, proposal in batches:
        if rank is not None:  # this process's half of the batch
            x0, labels, noise, proposal = (t.chunk(2)[rank] for t in (x0, labels, noise, proposal))
        loss = diffusion_loss(model, x0, labels, noise, *levels.at(proposal))["loss"].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    reference = EPGTransformer2DModel(**TINY)
    model = copy.deepcopy(reference)
    wrapped = shard(model)
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    assert len(units) == TINY["depth"] + TINY["decoder_depth"] + 1, len(units)
    assert all(isinstance(p, DTensor) for p in model.parameters())

    generator = torch.Generator().manual_seed(1)
    batches = [(torch.rand(8, 3, 16, 16, generator=generator) * 2 - 1, torch.randint(0, 10, (8,), generator=generator),
                torch.randn(8, 3, 16, 16, generator=generator), torch.rand(8, generator=generator) * 5 + 0.1)
               for _ in range(3)]
    ema = EMAModel(model.parameters(), decay=0.9, foreach=True)  # from the sharded parameters, as train_epg.py
    train(model, ema, batches, rank)
    reference_ema = EMAModel(reference.parameters(), decay=0.9, foreach=True)
    train(reference, reference_ema, batches)

    weights = ema_weights(ema)  # a collective: every process
    shard_sizes = [p.to_local().numel() for p in ema.shadow_params]
    assert sum(shard_sizes) < sum(p.numel() for p in reference.parameters())  # each process keeps a share
    gathered = [p.full_tensor() for p in model.parameters()]
    error = max((a - b).abs().max().item() for a, b in zip(gathered, reference.parameters()))
    ema_error = max((a - b).abs().max().item() for a, b in zip(weights, reference_ema.shadow_params))
    assert error < 1e-5 and ema_error < 1e-5, (error, ema_error)

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp())  # shared by the processes
    save_ema(ema, model.config, folder / "ema", is_main_process=rank == 0)  # as in checkpoint-<step>/ema
    dist.barrier()
    fresh = EMAModel(model.parameters(), decay=0.5, foreach=True)  # other weights and settings, sharded
    load_ema(fresh, folder, torch.device("cpu"))
    assert all(isinstance(p, DTensor) for p in fresh.shadow_params) and fresh.decay == 0.9
    assert all(torch.equal(a, b) for a, b in zip(ema_weights(fresh), weights))
    whole = ema_model(fresh, model.config)  # a plain model with the EMA weights, on every process
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = copy.deepcopy(reference).requires_grad_(False)
        for p, w in zip(expected.parameters(), reference_ema.shadow_params):
            p.copy_(w)
        out, ref_out = (m.eval()(x, torch.ones(2), torch.tensor([1, 2]), return_dict=False)[0] for m in (whole, expected))
    output_error = (out - ref_out).abs().max().item()
    assert output_error < 1e-4, output_error
    if rank == 0:
        print(json.dumps({"wrapped": wrapped, "units": len(units), "weights_error": error, "ema_error": ema_error,
                          "output_error": output_error}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
