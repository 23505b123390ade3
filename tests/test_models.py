"""Model behaviour: save/load round trips, dtypes, gradient checkpointing, reference checkpoints, bad input."""

import pytest
import torch

from epg_diffusers import EPGTransformer2DModel, RCMEncoderModel

from .conftest import TINY, perturbed, tiny_transformer


def tiny_inputs(batch: int = 3, size: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator)
    t = 250 * torch.log(torch.tensor([0.01, 1.0, 300.0][:batch]))
    y = torch.tensor([0, 5, 10][:batch])  # 10 = null class
    return x, t, y


def tiny_encoder(seed: int = 0) -> RCMEncoderModel:
    torch.manual_seed(seed)
    return perturbed(RCMEncoderModel(sample_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2,
                                     projector_hidden_dim=64, projector_dim=16), seed)


@torch.no_grad()
def test_fresh_generator_outputs_zero():
    torch.manual_seed(0)
    model = EPGTransformer2DModel(**TINY)
    x, t, y = tiny_inputs()
    out = model(x, t, y).sample
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero head and adaLN-Zero


@torch.no_grad()
@pytest.mark.parametrize("variant, dtype", [(None, torch.float32), ("fp16", torch.float16)])
def test_generator_round_trip(tmp_path, variant, dtype):
    model = tiny_transformer().to(dtype)
    x, t, y = tiny_inputs()
    model.save_pretrained(tmp_path, variant=variant)
    loaded = EPGTransformer2DModel.from_pretrained(tmp_path, variant=variant, dtype=dtype)
    assert loaded.dtype == dtype
    assert torch.equal(loaded(x.to(dtype), t, y).sample, model(x.to(dtype), t, y).sample)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)


@torch.no_grad()
def test_encoder_round_trip(tmp_path):
    model = tiny_encoder()
    x, t, _ = tiny_inputs()
    model.save_pretrained(tmp_path)
    loaded = RCMEncoderModel.from_pretrained(tmp_path)
    assert loaded.training is False
    a, b = model(x, t), loaded(x, t)
    assert torch.equal(a.projection, b.projection) and torch.equal(a.features, b.features)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_loading_and_forward(tmp_path, dtype):
    tiny_transformer().save_pretrained(tmp_path)
    model = EPGTransformer2DModel.from_pretrained(tmp_path, dtype=dtype)
    assert model.dtype == dtype
    x, t, y = tiny_inputs()
    out = model(x.to(dtype), t, y).sample
    assert out.dtype == dtype and torch.isfinite(out).all()
    reference = tiny_transformer()(x, t, y).sample
    assert (out.float() - reference).abs().max() < 0.1


def test_gradient_checkpointing_recomputes_blocks_and_matches():
    x, t, y = tiny_inputs()
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny_transformer().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        count = [0]
        for block in list(model.blocks) + list(model.decoder_blocks):
            block.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        model(x, t, y).sample.square().mean().backward()
        calls.append(count[0])
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert calls == [4, 8]  # every block runs again in the backward pass
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_decoder_dropout_is_only_on_attention_projections():
    model = EPGTransformer2DModel(**TINY, decoder_dropout=0.5)
    rates = {name: m.p for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    assert sorted(rates) == ["decoder_blocks.0.attn.proj_drop", "decoder_blocks.1.attn.proj_drop"]


@torch.no_grad()
def test_attention_backend_is_chosen_at_run_time():
    model = tiny_transformer()
    x, t, y = tiny_inputs()
    fused = model(x, t, y).sample
    try:
        model.set_attention_backend("_native_math")
        assert torch.allclose(model(x, t, y).sample, fused, atol=1e-5)
    finally:  # diffusers also changes its process-wide default: restore it for the other tests
        model.set_attention_backend("native")


def test_reference_state_dict_keys_map_one_to_one(reference):
    model = EPGTransformer2DModel(**reference["generator_config"])
    assert set(model.state_dict()) == set(reference["sub"]("tiny32/dm/"))
    encoder = RCMEncoderModel(**reference["encoder_config"])
    assert set(encoder.state_dict()) == set(reference["sub"]("tiny32/rcm_online/"))
    assert set(encoder.trunk_state_dict()) < set(model.state_dict())


def test_from_single_file_reads_pth_and_safetensors(reference, tmp_path):
    from safetensors.torch import save_file

    state = reference["sub"]("tiny32/dm/")
    torch.save(state, tmp_path / "nnet_ema.pth")
    save_file(state, tmp_path / "nnet_ema.safetensors")
    for name in ("nnet_ema.pth", "nnet_ema.safetensors"):
        model = EPGTransformer2DModel.from_single_file(tmp_path / name, **reference["generator_config"])
        assert torch.equal(model.state_dict()["out.weight"], state["out.weight"])


def test_from_single_file_errors(reference, tmp_path):
    state = reference["sub"]("tiny32/dm/")
    config = reference["generator_config"]
    with pytest.raises(ValueError, match="lacks 1 key.*'out.bias'"):
        EPGTransformer2DModel.from_single_file({k: v for k, v in state.items() if k != "out.bias"}, **config)
    with pytest.raises(ValueError, match="unknown to EPGTransformer2DModel.*'extra'"):
        EPGTransformer2DModel.from_single_file({**state, "extra": torch.zeros(1)}, **config)
    with pytest.raises(ValueError, match="shape mismatch for 'class_embed.weight'"):
        EPGTransformer2DModel.from_single_file(state, **{**config, "num_classes": 20})
    with pytest.raises(ValueError, match="'RCM-B/16' describes a RCMEncoderModel"):
        EPGTransformer2DModel.from_single_file(state, preset="RCM-B/16")
    with pytest.raises(ValueError, match="unknown preset 'EPG-Q/16'"):
        EPGTransformer2DModel.from_single_file(state, preset="EPG-Q/16")
    torch.save(state, tmp_path / "full.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        EPGTransformer2DModel.from_single_file(tmp_path / "truncated.pth", **config)
    with pytest.raises(ValueError, match="does not exist"):
        EPGTransformer2DModel.from_single_file(tmp_path / "missing.pth", **config)


class RunsCode:
    def __reduce__(self):
        return (print, ("pickle payload executed",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    torch.save({"weight": RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        EPGTransformer2DModel.from_single_file(tmp_path / "evil.pth", **TINY)
    assert "pickle payload executed" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(sample_size=18), "`sample_size`=18 is not divisible by `patch_size`=4"),
        (dict(num_heads=3), "not divisible by `num_heads`=3"),
        (dict(decoder_depth=3), "`decoder_depth`=3 exceeds `depth`=2"),
    ],
)
def test_bad_architecture(overrides, message):
    with pytest.raises(ValueError, match=message):
        EPGTransformer2DModel(**{**TINY, **overrides})
