"""The preset registry against the paper's parameter counts (Tables 7 and 8)."""

import pytest
import torch

from epg_diffusers.models import PAPER_PARAMETERS_M, PRESETS, get_preset, model_from_preset


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS_M))
def test_parameter_count_within_one_percent_of_paper(name):
    with torch.device("meta"):  # no memory or init cost
        model = model_from_preset(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / 1e6 / PAPER_PARAMETERS_M[name] - 1) < 0.01, count


def test_xl_matches_reference_checkpoint_exactly():
    with torch.device("meta"):
        model = model_from_preset("EPG-XL/16")
    assert sum(p.numel() for p in model.parameters()) == 582_986_064
    assert len(model.state_dict()) == 349


def test_registry_shapes():
    assert {"EPG-S/16", "EPG-B/16", "EPG-L/16", "EPG-XL/16", "EPG-XXL/16", "EPG-G/16", "EPG-L/32"} <= set(PRESETS)
    for size in "SBL":
        assert get_preset(f"RCM-{size}/16")[1]["sample_size"] == 256
        assert get_preset(f"RCM-{size}/32")[1]["sample_size"] == 512
    assert get_preset("EPG-L/32")[1]["sample_size"] == 512
    with pytest.raises(ValueError, match="unknown preset 'EPG-XL'"):
        get_preset("EPG-XL")
