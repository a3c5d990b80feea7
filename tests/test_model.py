"""MergeVQ end to end: presets and parameter counts, encode/decode contracts, gradients, save/load."""

import json

import pytest
import torch
import torch.nn.functional as F

from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.merge import reachable_counts
from mergevq.tokenizer.model import PAPER_PARAMS, PRESETS, MergeVQ, preset

TINY = ("tiny-G", "tiny-GR", "tiny-R")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: MergeVQ(config=preset(name)).eval() for name in TINY}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_presets_match_the_parameter_table(name):
    with torch.device("meta"):  # counts only: no memory, no initialisation time
        counts = MergeVQ(config=PRESETS[name]).parameter_counts()
    enc, dec = PAPER_PARAMS[name]
    # enc = the encoder with its [CLS] alignment head (the authors' encoder holds it); our learned
    # recovery is not in the paper's model and is reported on its own
    assert counts["enc"] == counts["encoder"] + counts["cls_head"] and counts["cls_head"] > 0
    assert counts["dec"] == counts["decoder"] and counts["recovery"] > 0
    assert counts["total"] == counts["enc"] + counts["dec"] + counts["recovery"]  # LFQ has no parameters
    assert abs(counts["enc"] / 1e6 / enc - 1) <= 0.02, counts
    assert abs(counts["dec"] / 1e6 / dec - 1) <= 0.02, counts


@pytest.mark.parametrize("name", TINY)
def test_decode_encode_shapes_at_full_nominal_and_min_k(models, name):
    model = models[name]
    cfg = model.config
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        smallest = reachable_counts(num_tokens=cfg.num_tokens, depth=cfg.depth)[0]
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


@pytest.mark.parametrize("recovery_depth", [1, 0])
def test_decode_at_k_equals_l_needs_no_recovery(models, monkeypatch, recovery_depth):
    """K = L: nothing was merged, so decode() without assign uses the identity assignment and never
    asks the learned recovery (which may not exist)."""
    torch.manual_seed(0)
    model = models["tiny-R"] if recovery_depth else MergeVQ(config=preset("tiny-R").replace({"recovery_depth": 0}))
    model.eval()
    assert (model.recovery is None) == (recovery_depth == 0)

    def no_recovery(codes):
        raise AssertionError("the learned recovery was asked at K = L")

    monkeypatch.setattr(model, "predict_assign", no_recovery)
    length = model.num_tokens
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        indices = model.encode(x, length).indices
        image = model.decode(indices)
        identity = torch.arange(length).expand(2, -1)
        assert torch.equal(image, model.decode(indices, identity))
        assert torch.equal(image, model.decode_raster(indices))
    assert image.shape == x.shape
    if recovery_depth == 0:
        monkeypatch.undo()
        with torch.no_grad(), pytest.raises(ConfigError, match="no learned recovery"):
            model.decode(model.encode(x, 16).indices)  # K < L without assign: nothing can predict it


def test_forward_recovery_logits_only_below_full_k(models):
    model = models["tiny-GR"]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        merged = model(x, 9)
        full = model(x, model.num_tokens)
    assert merged.recovery_logits.shape == (2, model.num_tokens, 9)
    assert full.recovery_logits is None  # nothing to recover at K = L
    assert torch.equal(full.encoded.assign, torch.arange(model.num_tokens).expand(2, -1))


def test_student_view_merges_the_same_number_of_tokens(monkeypatch):
    """The [CLS] fed to the alignment head comes from an encoder pass over the student view with
    num_merge = L − K (its own K differs), not num_keep = K."""
    torch.manual_seed(0)
    model = MergeVQ(config=preset("tiny-GR")).eval()  # L = 16 at 32 px
    with torch.no_grad():
        for block in model.encoder.blocks:  # LayerScale 1 instead of 1e-5: merging visibly moves [CLS]
            block.ls1.gamma.fill_(1.0)
            block.ls2.gamma.fill_(1.0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    student = torch.rand(2, 3, 24, 24) * 2 - 1  # 9 tokens
    calls = []
    encoder_forward = model.encoder.forward

    def spy(image, **kwargs):
        calls.append((image.shape[-1], kwargs))
        return encoder_forward(image, **kwargs)

    with torch.no_grad():
        monkeypatch.setattr(model.encoder, "forward", spy)
        out = model(x, 9, student_view=student)
        monkeypatch.undo()
        assert calls == [(32, {"num_keep": 9}), (24, {"num_merge": 16 - 9})]
        direct = model.cls_head(model.encoder(student, num_merge=7).cls)
        keep_nine = model.cls_head(model.encoder(student, num_keep=9).cls)  # no merging at all
        own_view = model(x, 9)
    torch.testing.assert_close(out.cls_feature, direct, atol=0, rtol=0)
    assert (out.cls_feature - keep_nine).abs().max() > 1e-4
    # without a student view the head reads the reconstruction view's [CLS]
    torch.testing.assert_close(own_view.cls_feature, model.cls_head(own_view.encoded.cls), atol=0, rtol=0)


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


@pytest.mark.parametrize("num_keep", [0, 65, -3, 2.5, 5])
def test_k_the_model_cannot_produce_is_a_one_line_error(models, num_keep):
    with pytest.raises(ConfigError) as info:
        models["tiny-G"].encode(torch.rand(1, 3, 32, 32), num_keep)
    assert "\n" not in str(info.value) and "num_keep" in str(info.value)


def test_unreachable_k_names_the_reachable_neighbours():
    with torch.device("meta"):
        shallow = MergeVQ(config=preset("tiny-G"))  # L = 64, depth 4: K >= 7
        deep = MergeVQ(config=preset("tiny-R").replace({"depth": 12}))  # L = 64, depth 12: holes
    with pytest.raises(ConfigError, match="unreachable") as info:
        shallow.check_num_keep(5)
    assert "[7, 8, 9]" in str(info.value)
    assert 38 not in reachable_counts(num_tokens=64, depth=12)
    with pytest.raises(ConfigError, match="unreachable") as info:
        deep.check_num_keep(38)
    assert "[35, 36, 37, 39, 40, 41]" in str(info.value) and "\n" not in str(info.value)
    assert deep.check_num_keep(37) == 37 and deep.check_num_keep(39) == 39


def test_bad_configs_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid: G-d32"):
        preset("GR-d48")
    with pytest.raises(ConfigError, match="unknown MergeVQ config key"):
        preset("tiny-G").replace({"dimm": 3})
    with pytest.raises(ConfigError, match="outside"):
        preset("tiny-G").replace({"num_keep": 65})
    with pytest.raises(WeightsError, match="config.json not found"):
        MergeVQ.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="dim=32 must equal ch \\* ch_mult\\[-1\\] = 64"):
        preset("tiny-GR").replace({"dim": 32})  # the CNN stem feeds the ViT directly
    with pytest.raises(ConfigError, match="dec_dim=48 must equal"):
        preset("tiny-GR").replace({"dec_dim": 48})
    MergeVQ(config=preset("tiny-GR")).save_pretrained(tmp_path / "a")
    config_path = tmp_path / "a" / "config.json"
    saved = json.loads(config_path.read_text())
    assert saved["format_version"] == 2
    meta = json.loads(json.dumps(saved))
    meta["model"]["cls_dim"] = 16  # a valid config whose head does not fit the saved weights
    config_path.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not match"):
        MergeVQ.from_pretrained(tmp_path / "a")
    for version in (1, None):  # format 1: the layout before the authors' architecture
        meta = {**saved, "format_version": version}
        config_path.write_text(json.dumps(meta))
        with pytest.raises(WeightsError, match=f"format_version {version!r}") as info:
            MergeVQ.from_pretrained(tmp_path / "a")
        assert "\n" not in str(info.value)
    config_path.write_text(json.dumps(saved))
    assert MergeVQ.from_pretrained(tmp_path / "a").config == preset("tiny-GR")


def test_build_config_is_a_preset_with_changes():
    from mergevq.tokenizer.model import build_config

    assert build_config(preset="tiny-GR") == preset("tiny-GR")
    changed = build_config(preset="tiny-GR", changes={"drop_path": 0.1, "k_candidates": [4, 9]})
    assert changed.drop_path == 0.1 and changed.k_candidates == (4, 9)
    with pytest.raises(ConfigError, match="valid: G-d32"):
        build_config(preset="nope")
