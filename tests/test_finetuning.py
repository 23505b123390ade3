"""Fine-tuning: objective parity with the reference, encoder initialisation, end-to-end runs and exact resume."""

import json
import shutil

import numpy as np
import pytest
import torch

from epg_diffusers import EPGConsistencyScheduler, EPGHeunScheduler, EPGPipeline, EPGTransformer2DModel, RCMEncoderModel
from epg_diffusers import sigmas as sm
from epg_diffusers.training.curricula import ect_r_of_t, ect_stage
from epg_diffusers.training.finetune import load_encoder, make_lr_scheduler, param_groups
from epg_diffusers.training.objectives import (
    ConsistencyNoiseLevels,
    DiffusionNoiseLevels,
    consistency_loss,
    diffusion_loss,
    network_inputs,
)

from .conftest import TINY
from .test_pretraining import ROOT, SUBPROCESS_ENV, metrics, run_rcm

GENERATOR = json.dumps({k: TINY[k] for k in ("sample_size", "depth", "embed_dim", "num_heads", "decoder_depth",
                                            "decoder_embed_dim", "decoder_num_heads")})


def diffusion_terms(reference, loss_weighting="reference"):
    data = reference["sub"]("tiny32/dm_loss/")
    model = EPGTransformer2DModel.from_single_file(reference["sub"]("tiny32/dm/"), **reference["generator_config"])
    levels = DiffusionNoiseLevels(-1.2, 1.6, shift=0.5, loss_weighting=loss_weighting)
    sigma, weight = levels.at(data["sigma_unshifted_proposal"])
    with torch.no_grad():
        return diffusion_loss(model, data["x_start"], data["y"], data["noise"], sigma, weight), weight, data


def test_diffusion_loss_matches_reference(reference):
    terms, _, data = diffusion_terms(reference)
    expected = data["loss_elementwise"].flatten(1).mean(1)  # the per-sample loss the reference averages
    # weights reach 2.6e4, so the loss is compared relative to its scale
    assert (terms["loss"] - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_uniform_loss_weighting_is_the_plain_x0_mse(reference):
    uniform, ones, _ = diffusion_terms(reference, "uniform")
    weighted, weight, _ = diffusion_terms(reference, "reference")
    assert torch.equal(ones, torch.ones_like(ones)) and torch.equal(uniform["loss"], uniform["x0_mse"])
    # the reference weight is one number per sample (1 / grid spacing), far from 1; uniform is the bare error
    assert torch.allclose(weighted["loss"], weight * uniform["loss"], rtol=1e-5)
    assert weight.min() > 1.5
    with pytest.raises(ValueError, match="`loss_weighting`"):
        DiffusionNoiseLevels(-1.2, 1.6, 0.5, loss_weighting="edm")


def test_noise_levels_draw_the_proposal_with_the_generator():
    levels = DiffusionNoiseLevels(-1.2, 1.6, shift=4.0, grid_size=1280)
    sigma, weight = levels.sample(64, torch.Generator().manual_seed(3))
    again, _ = levels.sample(64, torch.Generator().manual_seed(3))
    grid = sm.karras_sigmas(1280) * 4.0
    assert torch.equal(sigma, again) and torch.isin(sigma, grid).all() and (weight > 0).all()
    t, r, weight = ConsistencyNoiseLevels(-0.4, 1.6, shift=4.0).sample(64, 1, torch.Generator().manual_seed(3))
    assert (t >= r).all() and (r >= sm.SIGMA_MIN * 4.0 - 1e-7).all()
    assert torch.equal(weight, torch.where(t > r, 1 / (t - r), 0.0))


def test_consistency_loss_matches_reference(reference):
    data, cm = reference["sub"]("tiny32/dm_loss/"), reference["sub"]("tiny32/cm_loss/")
    config = reference["generator_config"]
    model = EPGTransformer2DModel.from_single_file(reference["sub"]("tiny32/cm/"), **config)
    perceptual = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_online/"), **reference["encoder_config"])
    t, r, weight = ConsistencyNoiseLevels(-0.4, 1.6, shift=0.5).pairs(cm["t_unshifted"], cm["r_unshifted"])
    out = consistency_loss(model, model, perceptual.eval().requires_grad_(False), data["x_start"], data["y"], cm["noise"],
                           t, r, weight, sm.SIGMA_MIN * 0.5)
    assert (out["loss"] - cm["loss"]).abs().max() <= 1e-5 * max(1.0, cm["loss"].abs().max())
    assert (out["perceptual_loss"] - cm["perceptual_loss"]).abs().max() <= 1e-5
    out["loss"].mean().backward()  # gradients reach the online network only
    assert model.out.weight.grad is not None and all(p.grad is None for p in perceptual.parameters())


def test_uniform_consistency_weighting_drops_only_the_one_over_t_minus_r(reference):
    data, cm = reference["sub"]("tiny32/dm_loss/"), reference["sub"]("tiny32/cm_loss/")
    model = EPGTransformer2DModel.from_single_file(reference["sub"]("tiny32/cm/"), **reference["generator_config"]).eval()
    perceptual = RCMEncoderModel.from_single_file(reference["sub"]("tiny32/rcm_online/"), **reference["encoder_config"])
    terms = {}
    for weighting in ("reference", "uniform"):
        t, r, weight = ConsistencyNoiseLevels(-0.4, 1.6, 0.5, loss_weighting=weighting).pairs(cm["t_unshifted"],
                                                                                              cm["r_unshifted"])
        with torch.no_grad():
            terms[weighting] = consistency_loss(model, model, perceptual.eval(), data["x_start"], data["y"], cm["noise"],
                                                t, r, weight, sm.SIGMA_MIN * 0.5)["consistency_loss"]
    gap = (cm["t_unshifted"] - cm["r_unshifted"]) * 0.5
    assert torch.allclose(terms["uniform"], torch.where(gap > 0, terms["reference"] * gap, 0.0), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="`loss_weighting`"):
        ConsistencyNoiseLevels(-0.4, 1.6, 0.5, loss_weighting="ect")


def test_ect_mapping_matches_reference(reference):
    for row in reference["meta"]["ect_r_of_t"]:
        r = ect_r_of_t(torch.tensor(row["t"]), ect_stage(row["step"]))
        assert torch.allclose(r, torch.tensor(row["r"]), atol=1e-6), row["step"]


def test_matched_dropout_masks_make_identical_target():
    torch.manual_seed(0)
    model = EPGTransformer2DModel(**TINY, decoder_dropout=0.5).train()
    torch.nn.init.normal_(model.out.weight, std=0.1)
    x0, y, noise = torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.randn(2, 3, 16, 16)
    perceptual = RCMEncoderModel(sample_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2,
                                 projector_hidden_dim=16, projector_dim=8).eval()
    t = torch.tensor([1.0, 2.0])
    out = consistency_loss(model, model, perceptual, x0, y, noise, t, t, torch.ones(2), 0.0005)  # r = t: same masks
    assert torch.all(out["consistency_loss"] == 0)


def test_encoder_initialisation_and_freezing(tmp_path):
    torch.manual_seed(0)
    encoder = RCMEncoderModel(sample_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2,
                              projector_hidden_dim=64, projector_dim=16)
    encoder.save_pretrained(tmp_path / "encoder")
    torch.save(encoder.state_dict(), tmp_path / "nnet.pth")
    for source in (tmp_path / "encoder", tmp_path / "nnet.pth"):
        model = EPGTransformer2DModel(**TINY)
        load_encoder(model, str(source), freeze=True)
        assert torch.equal(model.blocks[1].mlp.fc2.weight, encoder.blocks[1].mlp.fc2.weight)
        assert not model.pos_embed.requires_grad and model.decoder_blocks[0].skip_linear.weight.requires_grad
    groups = param_groups(model, 1e-3, 0.01)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    decayed = param_groups(EPGTransformer2DModel(**TINY), 1.0, 0.01, layer_decay=0.5)
    assert sorted({g["lr"] for g in decayed}) == [0.125, 0.25, 0.5, 1.0]
    assert {g["weight_decay"] for g in decayed if any(p.shape == (1, 18, 32) for p in g["params"])} == {0.0}


def test_encoder_that_does_not_fit_and_wrong_kind_of_file(tmp_path):
    wide = RCMEncoderModel(sample_size=16, patch_size=4, depth=2, embed_dim=64, num_heads=2,
                           projector_hidden_dim=64, projector_dim=16)
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="does not fit the generator's encoder.*embed_dim: encoder 64 vs generator 32"):
        load_encoder(EPGTransformer2DModel(**TINY), str(tmp_path / "wide"))
    torch.save(EPGTransformer2DModel(**TINY).state_dict(), tmp_path / "generator.pth")
    with pytest.raises(ValueError, match="is a generator checkpoint"):
        load_encoder(EPGTransformer2DModel(**TINY), str(tmp_path / "generator.pth"))
    with pytest.raises(ValueError, match="neither an encoder folder nor a checkpoint file"):
        load_encoder(EPGTransformer2DModel(**TINY), str(tmp_path / "missing"))


def test_step_learning_rate_schedule():
    args = type("Args", (), dict(lr_scheduler="step", lr_warmup_steps=10, lr_step_milestones=[40, 50],
                                 lr_step_factors=[0.3, 0.08], max_train_steps=100))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_lr_scheduler(args, optimizer)
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[5] == pytest.approx(0.5) and lrs[20] == 1.0 and lrs[45] == pytest.approx(0.3) and lrs[55] == pytest.approx(0.08)


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rcm")
    run_rcm("--max_train_steps", "2", "--output_dir", str(folder))
    return folder / "encoder"


def run_epg(preset, *args, check=True, env=None, launcher=None):
    import subprocess
    import sys

    command = [*(launcher or [sys.executable]), str(ROOT / "training" / "train_epg.py"), "--preset", preset, "--model_config", GENERATOR,
               "--train_batch_size", "16", "--report_to", "none", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={**SUBPROCESS_ENV, **(env or {})})
    if check and result.returncode:
        raise AssertionError(result.stderr[-3000:])
    return result


@pytest.mark.parametrize("mode", ["diffusion", "consistency"])
def test_pretrain_then_finetune_exports_a_pipeline_and_resumes_exactly(encoder_folder, tmp_path, mode):
    preset = f"EPG-tiny/digits-{mode}"
    common = ["--encoder", str(encoder_folder), "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--log_every", "1", "--validation_steps", "2"]
    run_epg(preset, *common, "--output_dir", str(tmp_path / "full"))
    run_epg(preset, *common, "--output_dir", str(tmp_path / "split"), "--max_steps_per_run", "3")
    run_epg(preset, *common, "--output_dir", str(tmp_path / "split"), "--resume_from_checkpoint", "latest")
    keys = ("loss", "lr")
    assert [[r[k] for k in keys] for r in metrics(tmp_path / "full")] == [[r[k] for k in keys] for r in metrics(tmp_path / "split")]
    pipe = EPGPipeline.from_pretrained(tmp_path / "full" / "pipeline")
    expected = EPGHeunScheduler if mode == "diffusion" else EPGConsistencyScheduler
    assert type(pipe.scheduler) is expected and pipe.labels.resolve("7") == [7]
    out = pipe(class_labels=["3", 4], output_type="np")
    assert out.images.shape == (2, 16, 16, 3)
    assert out.num_network_evaluations > 62 if mode == "diffusion" else out.num_network_evaluations == 1
    assert (tmp_path / "full" / "pipeline" / "README.md").read_text().count("EPGPipeline.from_pretrained") >= 1
    assert (tmp_path / "full" / "validation" / "step-0000002.png").is_file()
    # the EMA survived the resume exactly (saved as checkpoint-<step>/ema by EMAModel.save_pretrained)
    resumed = EPGPipeline.from_pretrained(tmp_path / "split" / "pipeline")
    assert all(torch.equal(a, b) for a, b in zip(pipe.transformer.state_dict().values(),
                                                 resumed.transformer.state_dict().values()))
    # every checkpoint holds a loadable EMA pipeline: the one of the last equals the final export
    checkpoint = tmp_path / "full" / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "ema" / "config.json").is_file() and not (checkpoint / "custom_checkpoint_1.pkl").exists()
    mid_run = EPGPipeline.from_pretrained(checkpoint / "pipeline")
    assert all(torch.equal(a, b) for a, b in zip(pipe.transformer.state_dict().values(),
                                                 mid_run.transformer.state_dict().values()))
    assert mid_run(class_labels=[1], output_type="np").images.shape == (1, 16, 16, 3)


def test_in_training_evaluation_logs_digits_metrics(encoder_folder, tmp_path):
    """--eval_every runs epg sample + epg evaluate --small-data digits on the EMA weights; a mid-run pipeline loads."""
    run = tmp_path / "run"
    run_epg("EPG-tiny/digits-diffusion", "--encoder", str(encoder_folder), "--max_train_steps", "2",
            "--checkpointing_steps", "1", "--export_pipeline_every", "2", "--validation_steps", "100",
            "--eval_every", "2", "--eval_num_samples", "20", "--eval_batch_size", "8", "--offload_ema",
            "--output_dir", str(run))
    (row,) = [row for row in metrics(run) if "eval/classifier_accuracy" in row]
    assert row["step"] == 2 and 0 <= row["eval/classifier_accuracy"] <= 1 and row["eval/frechet_distance"] > 0
    assert row["eval/num_samples"] == 20
    scores = json.loads((run / "eval" / "step-0000002" / "metrics.json").read_text())
    assert scores["classifier_accuracy"] == row["eval/classifier_accuracy"]
    assert not (run / "eval" / "step-0000002" / "samples.npz").exists()  # metrics kept, samples not (default)
    settings = json.loads((run / "eval" / "step-0000002" / "settings.json").read_text())
    assert settings["training_step"] == 2 and settings["status"] == "complete"
    assert not (run / "checkpoints" / "checkpoint-1" / "pipeline").exists()  # --export_pipeline_every 2
    assert EPGPipeline.from_pretrained(run / "checkpoints" / "checkpoint-2" / "pipeline").transformer.config.depth == 2


def test_in_training_evaluation_with_a_reference_batch_gives_adm_metrics(encoder_folder, tmp_path):
    """--eval_ref_npz (+ --eval_inception_weights): FID, sFID, IS, precision and recall, as epg evaluate computes
    them (Inception with random weights here: the metrics are real computations, not comparable numbers)."""
    from .test_evaluation import random_images, random_inception_weights, save_npz

    reference = save_npz(tmp_path / "ref.npz", random_images(12))
    weights = random_inception_weights(tmp_path / "inception.pth")
    run = tmp_path / "run"
    run_epg("EPG-tiny/digits-diffusion", "--encoder", str(encoder_folder), "--max_train_steps", "1",
            "--eval_every", "1", "--eval_num_samples", "10", "--eval_batch_size", "10", "--eval_ref_npz", reference,
            "--eval_inception_weights", weights, "--validation_steps", "100", "--export_pipeline_every", "0",
            "--output_dir", str(run))
    (row,) = [row for row in metrics(run) if "eval/fid" in row]
    for name in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(row[f"eval/{name}"]), name
    assert row["eval/num_samples"] == 10 and row["eval/num_reference"] == 12
    assert not (run / "checkpoints" / "checkpoint-1" / "pipeline").exists()  # --export_pipeline_every 0


def test_checkpoints_of_earlier_versions_resume_with_their_pickled_ema(encoder_folder, tmp_path):
    """Before the EMA was saved as ema/, accelerate pickled it as custom_checkpoint_1.pkl: such checkpoints resume."""
    from diffusers.training_utils import EMAModel

    common = ["--encoder", str(encoder_folder), "--max_train_steps", "2", "--checkpointing_steps", "1",
              "--validation_steps", "100", "--export_pipeline_every", "0"]
    run_epg("EPG-tiny/digits-diffusion", *common, "--output_dir", str(tmp_path / "full"))
    run = tmp_path / "old"
    run_epg("EPG-tiny/digits-diffusion", *common, "--max_steps_per_run", "1", "--output_dir", str(run))
    checkpoint = run / "checkpoints" / "checkpoint-1"
    config = EPGTransformer2DModel.load_config(checkpoint / "ema")  # the EMA's settings ride in the model config
    ema = EMAModel(EPGTransformer2DModel.from_pretrained(checkpoint / "ema").parameters(), decay=config["decay"],
                   min_decay=config["min_decay"])
    ema.optimization_step = config["optimization_step"]
    torch.save(ema.state_dict(), checkpoint / "custom_checkpoint_1.pkl")  # what accelerate wrote for the EMA
    shutil.rmtree(checkpoint / "ema")
    state = json.loads((checkpoint / "train_state.json").read_text())
    del state["files"]  # as earlier versions wrote it
    (checkpoint / "train_state.json").write_text(json.dumps(state))
    run_epg("EPG-tiny/digits-diffusion", *common, "--resume_from_checkpoint", "latest", "--output_dir", str(run))
    full, old = (EPGPipeline.from_pretrained(p / "pipeline").transformer for p in (tmp_path / "full", run))
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), old.state_dict().values()))


def test_validation_grids_reach_every_tracker(encoder_folder, tmp_path):
    """tensorboard and wandb (offline) both get the validation grid, under --tracker_project_name; a progress bar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    result = run_epg("EPG-tiny/digits-diffusion", "--encoder", str(encoder_folder), "--max_train_steps", "2",
                     "--validation_steps", "2", "--log_every", "1", "--report_to", "tensorboard, wandb",
                     "--tracker_project_name", "digits-trackers", "--output_dir", str(run),
                     env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert "steps: 100%" in result.stderr and "2/2" in result.stderr  # tqdm on the main process
    events = EventAccumulator(str(run / "logs" / "digits-trackers")).Reload()
    assert "validation" in events.Tags()["images"] and "loss" in events.Tags()["scalars"]
    (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list((wandb_run / "files" / "media" / "images").glob("validation_2_*.png"))
    assert b"digits-trackers" in next(wandb_run.glob("*.wandb")).read_bytes()


def test_finetuning_bad_input(encoder_folder, tmp_path):
    result = run_epg("EPG-tiny/digits-diffusion", "--encoder", str(encoder_folder), "--output_dir", str(tmp_path),
                     "--max_train_steps", "2", "--model_config", json.dumps({**json.loads(GENERATOR), "embed_dim": 64}),
                     check=False)
    assert result.returncode != 0 and "does not fit the generator's encoder" in result.stderr
    result = run_epg("EPG-tiny/digits-diffusion", "--output_dir", str(tmp_path), "--max_train_steps", "2", check=False)
    assert result.returncode != 0 and "exactly one of `--encoder`" in result.stderr


@pytest.mark.parametrize("mode", ["diffusion", "consistency"])
def test_a_generator_folder_is_refused_as_encoder(mode, tmp_path):
    """A generator's transformer folder or a pipeline folder given to --encoder: refused, saying what it is."""
    from .conftest import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    for given, says in ((tmp_path / "pipe" / "transformer", "is a saved EPGTransformer2DModel, not an RCMEncoderModel"),
                        (tmp_path / "pipe", "is a pipeline folder, not an encoder")):
        result = run_epg(f"EPG-tiny/digits-{mode}", "--encoder", str(given), "--output_dir", str(tmp_path / "out"),
                         "--max_train_steps", "1", check=False)
        assert result.returncode != 0 and says in result.stderr and "pass an RCMEncoderModel folder" in result.stderr


def test_digits_recipes_do_not_mirror_the_training_images():
    import PIL.Image

    from epg_diffusers.training.data import clean_view
    from epg_diffusers.training.recipes import EPG_RECIPES

    assert EPG_RECIPES["EPG-XL/16"]["random_flip"] and not EPG_RECIPES["EPG-tiny/digits-diffusion"]["random_flip"]
    image = PIL.Image.fromarray(np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (16, 1, 3)))  # left-right ramp
    views = {flip: [] for flip in (True, False)}
    for flip, found in views.items():
        for seed in range(8):
            torch.manual_seed(seed)
            found.append(clean_view(16, random_flip=flip)(image))
    assert all(torch.equal(view, views[False][0]) for view in views[False])
    assert any(not torch.equal(view, views[True][0]) for view in views[True])  # some seeds mirror it


def test_consistency_from_a_diffusion_pipeline_starts_as_its_denoiser(tmp_path):
    """--init_from_pipeline: the whole generator is the diffusion pipeline's, and under the x-prediction boundary
    condition the consistency model's D is the diffusion model's x0 away from sigma_min (ECT's initialisation)."""
    from epg_diffusers.training.objectives import consistency_denoise

    from .conftest import tiny_pipeline

    source = tiny_pipeline()
    source.save_pretrained(tmp_path / "diffusion")
    # learning rate 0: one step leaves the weights as loaded, so the export shows the initialisation
    run_epg("EPG-tiny/digits-consistency", "--init_from_pipeline", str(tmp_path / "diffusion"), "--aux_weight", "0",
            "--learning_rate", "0", "--max_train_steps", "1", "--output_dir", str(tmp_path / "cm"))
    pipe = EPGPipeline.from_pretrained(tmp_path / "cm" / "pipeline")
    assert type(pipe.scheduler) is EPGConsistencyScheduler
    assert pipe.scheduler.config.prediction_type == "sample_boundary_condition"
    assert all(torch.equal(a, b) for a, b in zip(source.transformer.state_dict().values(),
                                                 pipe.transformer.state_dict().values()))
    assert pipe(class_labels=[3], output_type="np").images.shape == (1, 16, 16, 3)
    config = json.loads((tmp_path / "cm" / "run_config.json").read_text())
    assert config["prediction_type"] == "sample_boundary_condition" and config["init_from_pipeline"]

    shift, model = sm.resolution_shift(16), source.transformer.eval()
    x0, noise, labels = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        for sigma in (0.05, 1.0, 80.0):  # unshifted; >= 11 sigma_min: within 1% of the diffusion model's x0
            s = torch.full((4,), sigma * shift)
            x = x0 + noise * sigma * shift
            f = model(*network_inputs(x, s), labels, return_dict=False)[0]
            d = consistency_denoise(model, x, s, labels, sm.SIGMA_MIN * shift, "sample_boundary_condition")
            assert torch.allclose(d, f, atol=0.01 * (x - f).abs().max().item() + 1e-6)
        s = torch.full((4,), sm.SIGMA_MIN * shift)  # the boundary condition: D(x, sigma_min) = x exactly
        x = x0 + noise * s[0]
        assert torch.equal(consistency_denoise(model, x, s, labels, sm.SIGMA_MIN * shift, "sample_boundary_condition"), x)


def test_init_from_pipeline_bad_input(encoder_folder, tmp_path):
    from .conftest import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "diffusion")
    cases = [
        (["--init_from_pipeline", str(encoder_folder), "--aux_weight", "0"], "is not a pipeline folder (no model_index.json)"),
        (["--init_from_pipeline", str(tmp_path / "diffusion"), "--encoder", str(encoder_folder)],
         "exactly one of `--encoder`"),
        (["--init_from_pipeline", str(tmp_path / "diffusion")], "needs `--perceptual_encoder`"),
        (["--init_from_pipeline", str(tmp_path / "diffusion"), "--aux_weight", "0", "--model_config",
          json.dumps({**json.loads(GENERATOR), "decoder_embed_dim": 32})], "does not fit the generator built with"),
    ]
    for args, message in cases:
        result = run_epg("EPG-tiny/digits-consistency", *args, "--output_dir", str(tmp_path / "out"),
                         "--max_train_steps", "1", check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
