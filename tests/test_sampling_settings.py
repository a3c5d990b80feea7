"""Per-sub-token sampling settings (issue 13 item 5): temperature, top-k, top-p and the guidance scale
take one value for every sub-token or one per sub-token, as the authors' comma lists do
(``-t 1.1,1.0 --cfg_scale 1.75,1.85``: sub-token 0 first). A tiny MergeAR on a 4 x 4 grid with
random weights (flat enough that a random draw is rarely the argmax)."""

from __future__ import annotations

import pytest
import torch

from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import SamplingSettings, SubTokenSampling, generate, teacher_forced_decode
from mergevq.tokenizer.quantizer import indices_to_subtokens

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = torch.tensor([3] * 12)
NUM_KEEP = torch.tensor([8] * 12)
SEEDS = torch.arange(12)


@pytest.fixture(scope="module")
def model() -> MergeAR:
    torch.manual_seed(0)
    return MergeAR(config=build_config(preset="tiny", changes={"grid": (4, 4), "window": 2})).eval()


def _sample(model, settings):
    return generate(model, labels=LABELS, num_keep=NUM_KEEP, seeds=SEEDS, settings=settings).indices


@pytest.mark.parametrize(("scalar", "listed"), [
    (SamplingSettings(temperature=0.9, top_k=30, top_p=0.95, cfg_scale=2.0),
     SamplingSettings(temperature=(0.9, 0.9), top_k=(30, 30), top_p=(0.95, 0.95), cfg_scale=(2.0, 2.0))),
    (SamplingSettings(temperature=1.0, cfg_scale=1.5, cfg_schedule="linear"),
     SamplingSettings(temperature=[1], cfg_scale=[1.5, 1.5], cfg_schedule="linear")),  # a config's lists, ints
], ids=["all", "linear"])
def test_a_list_equal_to_the_broadcast_scalar_gives_identical_samples(model, scalar, listed):
    assert torch.equal(_sample(model, scalar), _sample(model, listed))
    assert scalar.for_sub_tokens(2) == listed.for_sub_tokens(2)


@pytest.mark.parametrize("greedy", [0, 1])
def test_settings_apply_to_their_own_sub_token(model, greedy):
    """top-k 1 on one sub-token: that sub-token is the argmax at every position (checked against the
    cached logits of the sampled grid), while the other is drawn at random (it differs from the
    argmax somewhere, and across seeds)."""
    top_k = [0, 0]
    top_k[greedy] = 1
    indices = _sample(model, SamplingSettings(temperature=1.0, top_k=tuple(top_k)))
    forced = teacher_forced_decode(model, indices=indices, labels=LABELS, num_keep=NUM_KEEP)
    sub = indices_to_subtokens(indices, model.config.sub_token_bits)  # (B, L, 2)
    other = 1 - greedy
    assert torch.equal(sub[..., greedy], forced.logits[greedy].argmax(-1))
    assert (sub[..., other] != forced.logits[other].argmax(-1)).float().mean() > 0.5
    assert len(set(sub[:, 0, other].tolist())) > 6  # 12 seeds, first token: the random sub-token varies


def test_per_sub_token_temperature_and_guidance_reach_the_sampler(model):
    settings = SamplingSettings(temperature=(1.1, 1.0), top_k=(0, 5), top_p=(1.0, 0.9), cfg_scale=(1.75, 1.85))
    assert settings.for_sub_tokens(2) == (SubTokenSampling(cfg_scale=1.75, temperature=1.1, top_k=0, top_p=1.0),
                                          SubTokenSampling(cfg_scale=1.85, temperature=1.0, top_k=5, top_p=0.9))
    assert settings.scale(0, step=3, length=16) == 1.75 and settings.scale(1, step=3, length=16) == 1.85
    swapped = SamplingSettings(temperature=(1.1, 1.0), top_k=(0, 5), top_p=(1.0, 0.9), cfg_scale=(1.85, 1.75))
    assert not torch.equal(_sample(model, settings), _sample(model, swapped))  # the order is the sub-token's


def test_wrong_length_and_bad_values_are_one_line_errors(model):
    with pytest.raises(ValueError, match=r"temperature has 3 values \[1.1, 1.0, 0.9\] but this MergeAR has 2 "
                                         r"sub-tokens"):
        generate(model, labels=LABELS[:1], num_keep=NUM_KEEP[:1], seeds=SEEDS[:1],
                 settings=SamplingSettings(temperature=(1.1, 1.0, 0.9)))
    with pytest.raises(ValueError, match="top_k=0,2.5: expected integers"):
        SamplingSettings(top_k=(0, 2.5))
    with pytest.raises(ValueError, match="top_p=1.0,1.5"):
        SamplingSettings(top_p=(1.0, 1.5))
    with pytest.raises(ValueError, match="empty list"):
        SamplingSettings(temperature=())
