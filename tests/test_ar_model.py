"""MergeAR model: presets and parameter counts, the teacher-forced pass, causality, prefix, dropout,
gradients, save/load."""

import json

import pytest
import torch

from mergevq.ar.model import PRESETS, MergeAR, build_config
from mergevq.errors import ConfigError, WeightsError

PAPER_L = 343e6


def tiny(**changes) -> MergeAR:
    torch.manual_seed(0)
    return MergeAR(config=build_config(preset="tiny", changes=changes or None)).eval()


def batch(model: MergeAR, size: int = 3, *, vocab: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    indices = torch.randint(0, vocab, (size, cfg.num_tokens), generator=g) * 28657 % 2**cfg.code_dim  # merges
    labels = torch.randint(0, cfg.num_classes, (size,), generator=g)
    num_keep = torch.randint(1, cfg.num_tokens + 1, (size,), generator=g)
    return indices, labels, num_keep


def test_presets_have_the_paper_shapes_and_parameter_counts():
    shapes = {name: (c.depth, c.dim) for name, c in PRESETS.items()}
    assert shapes["B"] == (12, 768) and shapes["L"] == (24, 1024) and shapes["XL"] == (36, 1280)
    with torch.device("meta"):  # counts only: no memory, no initialisation time
        counts = {name: MergeAR(config=c).parameter_count() for name, c in PRESETS.items()}
    assert abs(counts["L"] / PAPER_L - 1) < 0.01, counts  # the paper's MergeAR-L: 343M
    assert counts == {"tiny": 703_680, "B": 107_107_584, "L": 344_947_712, "XL": 786_092_800}


def test_forward_outputs_and_loss():
    model = tiny()
    indices, labels, num_keep = batch(model)
    out = model(indices, labels, num_keep)
    assert [tuple(lg.shape) for lg in out.logits] == [(3, 64, 64), (3, 64, 4096)]
    assert torch.allclose(out.loss, out.sub_losses[0] + out.sub_losses[1])
    # an untrained model is close to uniform: CE ~ bits · ln 2 per sub-token
    for loss, bits in zip(out.sub_losses, (6, 12)):
        assert abs(loss.item() - bits * 0.6931) < 0.5


def test_every_parameter_gets_a_gradient():
    model = tiny().train()
    model(*batch(model)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("mask", ["mergear", "causal"])
def test_changing_a_token_never_changes_earlier_logits(mask):
    model = tiny(mask=mask, window=3)
    indices, labels, num_keep = batch(model, 2, vocab=4)
    base = model(indices, labels, num_keep).logits
    for t in (0, 5, 17, 40, 62):
        changed = indices.clone()
        changed[:, t] = (changed[:, t] + 12345) % 2**18  # also flips duplicate / first-occurrence status
        after = model(changed, labels, num_keep).logits
        for before_s, after_s in zip(base, after):
            assert torch.equal(before_s[:, :t], after_s[:, :t]), t  # positions < t predict t_1..t_t
        assert not torch.equal(base[1][:, t], after[1][:, t])  # sub-token 1 of t sees sub-token 0 of t


def test_merge_token_carries_num_keep_and_class_carries_label():
    model = tiny()
    indices, labels, num_keep = batch(model)
    base = model(indices, labels, num_keep).logits[0]
    assert not torch.allclose(base, model(indices, labels, num_keep + 5).logits[0])
    assert not torch.allclose(base, model(indices, (labels + 1) % 10, num_keep).logits[0])
    plain = tiny(merge_token=False)
    assert plain.config.prefix == 1 and plain.merge_embedding is None
    assert torch.equal(plain(indices, labels, num_keep).logits[0], plain(indices, labels, num_keep + 5).logits[0])


def test_w_at_least_l_without_merge_token_is_the_plain_causal_model():
    causal = tiny(mask="causal", merge_token=False)
    wide = MergeAR(config=causal.config.replace({"mask": "mergear", "window": 64})).eval()
    wide.load_state_dict(causal.state_dict())
    indices, labels, num_keep = batch(causal, vocab=3)
    for a, b in zip(causal(indices, labels, num_keep).logits, wide(indices, labels, num_keep).logits):
        assert (a - b).abs().max() <= 1e-5


def test_dropout_only_in_training_mode():
    model = tiny(class_dropout=0.0, token_dropout=0.0)
    indices, labels, num_keep = batch(model)
    assert torch.equal(model(indices, labels, num_keep).loss, model.train()(indices, labels, num_keep).loss)
    model = tiny(class_dropout=0.9, token_dropout=0.0)
    null = torch.full_like(labels, model.null_class)
    torch.manual_seed(1)  # with p = 0.9 every one of the 3 labels is dropped under this seed
    dropped = model.train()(indices, labels, num_keep).logits[1]
    assert torch.allclose(dropped, model.eval()(indices, null, num_keep).logits[1], atol=1e-6)
    assert torch.equal(model(indices, labels, num_keep).loss, model(indices, labels, num_keep).loss)  # eval: none


def test_save_and_load_round_trip(tmp_path):
    model = tiny(window=5)
    model.save_pretrained(tmp_path / "ar")
    meta = json.loads((tmp_path / "ar" / "config.json").read_text())
    assert meta["model"]["window"] == 5 and meta["kind"] == "mergear"
    loaded = MergeAR.from_pretrained(tmp_path / "ar")
    assert loaded.config == model.config and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    indices, labels, num_keep = batch(model)
    assert torch.equal(model(indices, labels, num_keep).loss, loaded(indices, labels, num_keep).loss)
    assert not list(tmp_path.joinpath("ar").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(WeightsError, match="config.json not found"):
        MergeAR.from_pretrained(tmp_path)
    tiny().save_pretrained(tmp_path / "ar")
    path = tmp_path / "ar" / "config.json"
    meta = json.loads(path.read_text())
    meta["model"]["dim"] = 128
    path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match"):
        MergeAR.from_pretrained(tmp_path / "ar")
    meta["model"]["depht"] = 3
    path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="depht"):
        MergeAR.from_pretrained(tmp_path / "ar")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown MergeAR preset 'M'"):
        build_config(preset="M")
    with pytest.raises(ConfigError, match="windw"):
        build_config(preset="tiny", changes={"windw": 3})
    with pytest.raises(ConfigError, match="key 'mask': expected one of 'mergear', 'causal', got 'ring'"):
        build_config(preset="tiny", changes={"mask": "ring"})
    with pytest.raises(ConfigError, match="sub_token_bits"):
        build_config(preset="tiny", changes={"sub_token_bits": [6, 10]})
    assert build_config(preset="L", changes={"grid": [24, 24]}).num_tokens == 576


def test_layers_rope_is_relative_swiglu_width_and_rmsnorm():
    from mergevq.layers.mlp import swiglu_hidden
    from mergevq.layers.norms import RMSNorm
    from mergevq.layers.rope import apply_rope, rope_2d

    table = rope_2d(grid=(4, 4), head_dim=16, identity_prefix=2)
    q, k = torch.randn(16), torch.randn(16)
    rotated = [(apply_rope(q[None], table[i:i + 1]), apply_rope(k[None], table[j:j + 1])) for i, j in
               ((2 + 5, 2 + 0), (2 + 15, 2 + 10))]  # the same (row, col) offset (+1, +1) at two places
    scores = [float((a * b).sum()) for a, b in rotated]
    assert abs(scores[0] - scores[1]) < 1e-4
    assert torch.equal(apply_rope(q[None], table[0:1]), q[None])  # prefix entries are not rotated
    assert swiglu_hidden(1024) == 2816 and swiglu_hidden(768) == 2048
    x = torch.randn(3, 10) * 7
    assert torch.allclose(RMSNorm(dim=10)(x).square().mean(-1), torch.ones(3), atol=1e-4)
