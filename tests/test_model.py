"""MergeVQ end to end: presets and parameter counts, encode/decode contracts, gradients, save/load."""

import json

import pytest
import torch
import torch.nn.functional as F

from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.merge import min_reachable
from mergevq.tokenizer.model import PAPER_PARAMS, PRESETS, MergeVQ, preset

TINY = ("tiny-G", "tiny-GR", "tiny-R")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: MergeVQ(config=preset(name)).eval() for name in TINY}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_presets_match_the_parameter_table(name):
    with torch.device("meta"):  # counts only: no memory, no initialisation time
        counts = MergeVQ(config=PRESETS[name]).parameter_counts()
    enc, dec = PAPER_PARAMS[name]
    assert abs(counts["enc"] / 1e6 / enc - 1) <= 0.02, counts
    assert abs(counts["dec"] / 1e6 / dec - 1) <= 0.02, counts


@pytest.mark.parametrize("name", TINY)
def test_decode_encode_shapes_at_full_nominal_and_min_k(models, name):
    model = models[name]
    cfg = model.config
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        smallest = min_reachable(num_tokens=cfg.num_tokens, depth=cfg.depth)
        for k in (cfg.num_tokens, cfg.num_keep, min(cfg.k_candidates), smallest):
            enc = model.encode(x, k)
            assert enc.indices.shape == (2, k) and enc.indices.dtype == torch.int64
            assert enc.assign.shape == (2, cfg.num_tokens) and int(enc.assign.max()) == k - 1
            assert enc.codes.shape == (2, k, cfg.code_dim) and set(enc.codes.unique().tolist()) <= {-1.0, 1.0}
            assert enc.cls.shape == (2, cfg.dim)
            image = model.decode(enc.indices, enc.assign)
            assert image.shape == x.shape
            assert model.decode(enc.indices).shape == x.shape  # learned recovery fills in assign


def test_decode_raster_equals_decode_with_the_assignment(models):
    """MergeAR's expanded (B, L) grid t_l = indices[assign[l]] decodes to the same image."""
    model = models["tiny-GR"]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        enc = model.encode(x, 9)
        raster = enc.indices.gather(1, enc.assign)  # (B, L)
        assert torch.equal(model.decode_raster(raster), model.decode(enc.indices, enc.assign))
        # and the reconstruction of forward() is that same image
        assert torch.allclose(model(x, 9).reconstruction, model.decode_raster(raster), atol=1e-6)


def test_full_k_keeps_every_position_apart(models):
    model = models["tiny-R"]
    with torch.no_grad():
        enc = model.encode(torch.rand(1, 3, 32, 32), model.num_tokens)
    assert torch.equal(enc.assign[0], torch.arange(model.num_tokens))


@pytest.mark.parametrize("name", TINY)
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = MergeVQ(config=preset(name)).train()
    cfg = model.config
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    student = torch.rand(2, 3, cfg.image_size - cfg.downsample_factor, cfg.image_size - cfg.downsample_factor)
    out = model(x, cfg.num_keep, student_view=student)
    loss = (
        F.l1_loss(out.reconstruction, x)
        + out.encoded.entropy_loss
        + out.encoded.commit_loss
        + out.cls_feature.square().mean()
        + F.cross_entropy(out.recovery_logits.transpose(1, 2), out.encoded.assign)
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, missing


def test_recovery_loss_does_not_reach_the_encoder():
    model = MergeVQ(config=preset("tiny-GR"))
    out = model(torch.rand(2, 3, 32, 32), 9)
    F.cross_entropy(out.recovery_logits.transpose(1, 2), out.encoded.assign).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.recovery.parameters())


def test_from_pretrained_round_trip_gives_identical_outputs(models, tmp_path):
    model = models["tiny-G"]
    model.save_pretrained(tmp_path / "tok")
    loaded = MergeVQ.from_pretrained(tmp_path / "tok").eval()
    assert loaded.config == model.config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = model.encode(x, 36), loaded.encode(x, 36)
        assert torch.equal(a.indices, b.indices) and torch.equal(a.assign, b.assign)
        assert torch.equal(model.decode(a.indices, a.assign), loaded.decode(b.indices, b.assign))
        assert torch.equal(model.decode(a.indices), loaded.decode(b.indices))


@pytest.mark.parametrize("num_keep", [0, 65, -3, 2.5])
def test_k_the_model_cannot_produce_is_a_one_line_error(models, num_keep):
    with pytest.raises(ConfigError) as info:
        models["tiny-G"].encode(torch.rand(1, 3, 32, 32), num_keep)
    assert "\n" not in str(info.value) and "num_keep" in str(info.value)


def test_bad_configs_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid: G-d32"):
        preset("GR-d48")
    with pytest.raises(ConfigError, match="unknown MergeVQ config key"):
        preset("tiny-G").replace({"dimm": 3})
    with pytest.raises(ConfigError, match="outside"):
        preset("tiny-G").replace({"num_keep": 65})
    with pytest.raises(WeightsError, match="config.json not found"):
        MergeVQ.from_pretrained(tmp_path)
    MergeVQ(config=preset("tiny-GR")).save_pretrained(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    meta["model"]["dim"] = 32
    (tmp_path / "a" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match"):
        MergeVQ.from_pretrained(tmp_path / "a")


def test_build_config_is_a_preset_with_changes():
    from mergevq.tokenizer.model import build_config

    assert build_config(preset="tiny-GR") == preset("tiny-GR")
    changed = build_config(preset="tiny-GR", changes={"drop_path": 0.1, "k_candidates": [4, 9]})
    assert changed.drop_path == 0.1 and changed.k_candidates == (4, 9)
    with pytest.raises(ConfigError, match="valid: G-d32"):
        build_config(preset="nope")
