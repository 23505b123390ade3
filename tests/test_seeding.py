"""Training's random streams: one module, named streams, no two coordinates sharing a seed."""

import itertools
import re

import pytest

from epg_diffusers.training.seeding import STREAMS, stream_generator, stream_seed

from .test_pretraining import ROOT


def test_streams_never_share_a_seed():
    seeds = [stream_seed(0, "grid_index", step=s) for s in range(64)]
    for stream in ("noise", "global_rng"):
        seeds += [stream_seed(0, stream, step=s, process=p, micro_step=m)
                  for s, p, m in itertools.product(range(64), range(16), range(8))]
    seeds += [stream_seed(0, "augmentation", epoch=e, index=i) for e in range(2) for i in (0, 1, 1_000_033, 1_000_034)]
    seeds += [stream_seed(1, "noise", step=s, process=0, micro_step=0) for s in range(64)]  # another run seed
    assert len(set(seeds)) == len(seeds) == 64 + 2 * 64 * 16 * 8 + 8 + 64
    # the meetings of the earlier arithmetic offsets, now apart
    assert stream_seed(0, "noise", step=0, process=10, micro_step=0) != stream_seed(0, "global_rng", step=0, process=0,
                                                                                   micro_step=1)
    assert stream_seed(0, "augmentation", epoch=0, index=1_000_033) != stream_seed(0, "augmentation", epoch=1, index=0)


def test_a_stream_is_a_function_of_its_coordinates_only():
    a = stream_generator(3, "noise", step=5, process=1, micro_step=0)
    b = stream_generator(3, "noise", micro_step=0, process=1, step=5)
    assert a.initial_seed() == b.initial_seed() == stream_seed(3, "noise", step=5, process=1, micro_step=0)
    assert 0 <= a.initial_seed() < 2**63


@pytest.mark.parametrize("call, message", [
    (lambda: stream_seed(0, "dropout", step=1), "unknown random stream 'dropout'"),
    (lambda: stream_seed(0, "noise", step=1), "stream 'noise' is drawn for ('step', 'process', 'micro_step')"),
    (lambda: stream_seed(-1, "grid_index", step=1), "must be integers >= 0"),
    (lambda: stream_seed(0, "grid_index", step=1.5), "must be integers >= 0"),
])
def test_bad_streams_are_refused(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_training_seeds_only_through_the_seeding_module():
    """No training code derives a seed from the run's seed with its own arithmetic (the offsets that used to collide);
    fixed seeds (the diagnostic's probe noise, the validation grid's image i) are not drawn from the run seed."""
    files = [*(ROOT / "epg_diffusers" / "training").glob("*.py"), *(ROOT / "training").glob("*.py")]
    fixed = re.compile(r"manual_seed\((\d+|i)\)")
    offenders = [f"{path.name}:{n}" for path in files if path.name != "seeding.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if "manual_seed(" in line and "stream_seed(" not in line and not fixed.search(line)]
    assert not offenders, offenders
    assert set(STREAMS) == {"grid_index", "noise", "global_rng", "augmentation"}
