"""The MergeVQ tokenizer: merging encoder -> LFQ -> (learned) recovery -> decoder (DESIGN §4).

State is passed, never stashed: ``encode`` returns the codes *and* the assignment of every position
to a kept token, ``decode`` takes them. ``decode(indices, assign=None)`` predicts the assignment with
the learned recovery; ``decode_raster`` decodes an expanded (B, L) index grid as MergeAR produces.

A model is fully described by a :class:`MergeVQConfig`; ``save_pretrained`` writes it as
``config.json`` next to ``model.safetensors`` so ``MergeVQ.from_pretrained(dir)`` needs nothing from
the training code. The frozen teacher of the alignment loss is not part of this module (the
training module owns it), so it can never end up in a checkpoint.

Parameter counts (DESIGN §4 table, "params enc/dec"): *enc* = stem + merging ViT + pre-quantisation
head + [CLS] alignment head (the authors' encoder holds that head, and the paper counts it: with it
every preset lands within 0.7 % of the table); *dec* = the decoder. The learned recovery is ours
(the authors' forward path has none) and is reported on its own. ``MergeVQ.parameter_counts()``
returns all of them; a test holds every paper preset within 2 % of the table.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mergevq.config import check_types
from mergevq.errors import ConfigError, WeightsError
from mergevq.fileio import atomic_write, load_weights_strict
from mergevq.tokenizer.alignment import ClsHead
from mergevq.tokenizer.decoder import Decoder, DepthToSpaceUpsample
from mergevq.tokenizer.encoder import CNNStem, MergingEncoder, PatchStem
from mergevq.tokenizer.merge import plan_merges
from mergevq.tokenizer.quantizer import LFQ
from mergevq.tokenizer.recovery import LearnedRecovery, unmerge

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 2  # 2: the authors' architecture (issue #12); 1 files hold the earlier layout


@dataclass(frozen=True)
class MergeVQConfig:
    """Everything that defines a tokenizer's architecture (serialised as ``config.json``)."""

    image_size: int = 256
    # stem: a CNN (G, GR variants) or a patchify conv (R variant)
    stem: Literal["cnn", "patch"] = "cnn"
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 1, 2, 4, 8)
    enc_res_blocks: tuple[int, ...] = (4, 4, 4, 4, 4)
    patch_size: int = 16
    # merging ViT
    dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    # LFQ
    code_dim: int = 18
    sub_token_bits: tuple[int, ...] = (6, 12)
    entropy_temperature: float = 0.01
    # learned recovery (0 = off: decoding then needs the assignment)
    recovery_depth: int = 2
    # decoder (dec_dim must equal dec_ch * dec_ch_mult[-1]; blocks per level finest first)
    dec_dim: int = 512
    dec_depth: int = 12
    dec_heads: int = 8
    dec_ch: int = 64
    dec_ch_mult: tuple[int, ...] = (1, 1, 2, 4, 8)
    dec_res_blocks: tuple[int, ...] = (4, 5, 5, 5, 5)
    # [CLS] alignment head output width (the teacher's, 768 for DINOv2 ViT-B; 0 = no head) and form:
    # "mlp3" (the authors' GR/R head) or "mlp_ln" (their G head)
    cls_dim: int = 768
    cls_head: Literal["mlp3", "mlp_ln"] = "mlp3"
    # kept-token counts: the nominal K and the training candidates
    num_keep: int = 144
    k_candidates: tuple[int, ...] = (121, 144, 169, 196, 225, 256)

    @property
    def downsample_factor(self) -> int:
        return self.patch_size if self.stem == "patch" else 2 ** (len(self.ch_mult) - 1)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample_factor
        return side, side

    @property
    def num_tokens(self) -> int:
        h, w = self.grid
        return h * w

    def replace(self, changes: Mapping[str, object]) -> MergeVQConfig:
        """A copy with ``changes`` applied; an unknown field is a one-line ConfigError."""
        return _config_from_dict({**dataclasses.asdict(self), **changes}, source="overrides")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _config_from_dict(data: Mapping[str, object], *, source: str) -> MergeVQConfig:
    fields = {f.name: f for f in dataclasses.fields(MergeVQConfig)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown MergeVQ config key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
        )
    # A wrong-typed value in somebody's config.json is one line here, not a traceback deep in torch.
    check_types(MergeVQConfig, data, origins={name: source for name in data})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    config = MergeVQConfig(**values)
    _validate(config, source=source)
    return config


def _validate(config: MergeVQConfig, *, source: str) -> None:
    if config.stem not in ("cnn", "patch"):
        raise ConfigError(f"{source}: stem={config.stem!r}; valid: cnn, patch")
    if config.image_size % config.downsample_factor:
        raise ConfigError(
            f"{source}: image_size={config.image_size} is not a multiple of the down-sampling factor "
            f"{config.downsample_factor}"
        )
    if config.stem == "cnn" and len(config.enc_res_blocks) != len(config.ch_mult):
        raise ConfigError(f"{source}: enc_res_blocks needs one entry per ch_mult level ({len(config.ch_mult)})")
    if config.stem == "cnn" and config.ch_mult and config.dim != config.ch * config.ch_mult[-1]:
        raise ConfigError(
            f"{source}: dim={config.dim} must equal ch * ch_mult[-1] = {config.ch * config.ch_mult[-1]} "
            f"(the CNN stem feeds the ViT directly)"
        )
    if config.dec_ch_mult and config.dec_dim != config.dec_ch * config.dec_ch_mult[-1]:
        raise ConfigError(
            f"{source}: dec_dim={config.dec_dim} must equal dec_ch * dec_ch_mult[-1] = "
            f"{config.dec_ch * config.dec_ch_mult[-1]} (the decoder ViT feeds its CNN directly)"
        )
    if config.cls_head not in ("mlp3", "mlp_ln"):
        raise ConfigError(f"{source}: cls_head={config.cls_head!r}; valid: mlp3, mlp_ln")
    if len(config.dec_res_blocks) != len(config.dec_ch_mult):
        raise ConfigError(f"{source}: dec_res_blocks needs one entry per dec_ch_mult level ({len(config.dec_ch_mult)})")
    if 2 ** (len(config.dec_ch_mult) - 1) != config.downsample_factor:
        raise ConfigError(
            f"{source}: the decoder up-samples by {2 ** (len(config.dec_ch_mult) - 1)} but the encoder "
            f"down-samples by {config.downsample_factor}; give dec_ch_mult {config.downsample_factor.bit_length()} levels"
        )
    _validate_k(config, source=source)


def _validate_k(config: MergeVQConfig, *, source: str) -> None:
    """The K candidates must be producible from this config's L tokens: checked here, when the
    config is built, rather than when training first samples a K that cannot be made."""
    length, h, w = config.num_tokens, *config.grid
    where = f"{source}: k_candidates={list(config.k_candidates)} for L={length} tokens ({h}x{w}, image_size " \
            f"{config.image_size})"
    fitting = [k for k in config.k_candidates if 1 <= k <= length]
    if not fitting:
        raise ConfigError(f"{where}: no candidate K fits in [1, {length}]; set k_candidates (and num_keep) to "
                          f"counts in [1, {length}] or change image_size")
    bad = [k for k in (config.num_keep, *config.k_candidates) if not 1 <= k <= length]
    if bad:
        raise ConfigError(f"{source}: kept-token counts {bad} are outside [1, L={length}]")
    unreachable = [k for k in config.k_candidates
                   if plan_merges(num_tokens=length, num_merge=length - k, depth=config.depth).num_keep != k]
    if unreachable:
        reachable = "none is" if len(unreachable) == len(config.k_candidates) else "not all are"
        raise ConfigError(f"{where}: {reachable} reachable by the merge schedule of {config.depth} blocks "
                          f"(unreachable: {unreachable}); mergevq.tokenizer.merge.reachable_counts lists the "
                          "counts it can produce")


# --------------------------------------------------------------------------------------------------
# Presets: the six variants of DESIGN §4, and tiny ones for tests and the CPU demo
# --------------------------------------------------------------------------------------------------

# The authors' training configs (configs/gpu_s1/imagenet_mergevq_256_*.yaml): 4 encoder ResBlocks per
# level, 4 + 1 decoder ResBlocks per level except the finest; G's [CLS] head has a LayerNorm.
_G = dict(k_candidates=(225, 256, 289, 324, 361, 400, 441, 484, 529), num_keep=256, cls_head="mlp_ln")
_G32 = dict(k_candidates=(225, 256, 289, 324, 361, 400, 441, 484), num_keep=256, cls_head="mlp_ln")
_GR = dict(k_candidates=(121, 144, 169, 196, 225, 256), num_keep=144, cls_head="mlp3")
_R = dict(k_candidates=(49, 64, 81, 100, 121, 144), num_keep=64, cls_head="mlp3")

PRESETS: dict[str, MergeVQConfig] = {
    "G-d32": MergeVQConfig(ch=32, ch_mult=(2, 4, 8, 12), enc_res_blocks=(4, 4, 4, 4), dim=384, num_heads=8,
                           dec_dim=384, dec_heads=8, dec_ch=32, dec_ch_mult=(2, 4, 8, 12),
                           dec_res_blocks=(4, 5, 5, 5), **_G32),
    "G-d64": MergeVQConfig(ch=64, ch_mult=(1, 2, 4, 8), enc_res_blocks=(4, 4, 4, 4), dim=512, num_heads=8,
                           dec_dim=512, dec_heads=8, dec_ch=64, dec_ch_mult=(1, 2, 4, 8),
                           dec_res_blocks=(4, 5, 5, 5), **_G),
    "GR-d32": MergeVQConfig(ch=32, ch_mult=(2, 2, 4, 8, 12), enc_res_blocks=(4, 4, 4, 4, 4), dim=384,
                            num_heads=8, dec_dim=384, dec_heads=8, dec_ch=32, dec_ch_mult=(2, 2, 4, 8, 12),
                            dec_res_blocks=(4, 5, 5, 5, 5), **_GR),
    "GR-d64": MergeVQConfig(ch=64, ch_mult=(1, 1, 2, 4, 8), enc_res_blocks=(4, 4, 4, 4, 4), dim=512,
                            num_heads=8, **_GR),
    "GR-d96": MergeVQConfig(ch=96, ch_mult=(1, 1, 2, 4, 8), enc_res_blocks=(4, 4, 4, 4, 4), dim=768,
                            num_heads=12, dec_dim=768, dec_heads=12, dec_ch=96, dec_ch_mult=(1, 1, 2, 4, 8),
                            dec_res_blocks=(4, 5, 5, 5, 5), **_GR),
    # R: a ViT-B encoder (768 wide, 12 heads of 64) on a patch-16 stem, the GR-d64 decoder.
    "R": MergeVQConfig(stem="patch", patch_size=16, ch=0, ch_mult=(), enc_res_blocks=(), dim=768,
                       num_heads=12, **_R),
    # Tiny variants: 32 px images, 64 tokens, for tests and the CPU demo (same code paths).
    "tiny-G": MergeVQConfig(image_size=32, ch=16, ch_mult=(1, 2, 4), enc_res_blocks=(1, 1, 1), dim=64,
                            depth=4, num_heads=2, recovery_depth=1, dec_dim=64, dec_depth=2, dec_heads=2,
                            dec_ch=32, dec_ch_mult=(1, 2, 2), dec_res_blocks=(1, 1, 1), cls_dim=32,
                            cls_head="mlp_ln", num_keep=36, k_candidates=(25, 36, 49, 64)),
    "tiny-GR": MergeVQConfig(image_size=32, ch=16, ch_mult=(1, 1, 2, 4), enc_res_blocks=(1, 1, 1, 1), dim=64,
                             depth=4, num_heads=2, recovery_depth=1, dec_dim=64, dec_depth=2, dec_heads=2,
                             dec_ch=32, dec_ch_mult=(1, 1, 2, 2), dec_res_blocks=(1, 1, 1, 1), cls_dim=32,
                             num_keep=9, k_candidates=(4, 9, 16)),
    "tiny-R": MergeVQConfig(image_size=32, stem="patch", patch_size=4, ch=0, ch_mult=(), enc_res_blocks=(),
                            dim=64, depth=4, num_heads=2, recovery_depth=1, dec_dim=64, dec_depth=2, dec_heads=2,
                            dec_ch=32, dec_ch_mult=(1, 1, 2), dec_res_blocks=(1, 1, 1), cls_dim=32,
                            num_keep=16, k_candidates=(9, 16, 25, 36, 64)),
}

# DESIGN §4 "params enc/dec" in millions
PAPER_PARAMS: dict[str, tuple[float, float]] = {
    "G-d32": (40, 51), "G-d64": (65, 83), "GR-d32": (43, 52), "GR-d64": (70, 83), "GR-d96": (155, 187),
    "R": (100, 83),
}


def _named_preset(name: str) -> MergeVQConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown MergeVQ preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset(name: str) -> MergeVQConfig:
    """The named preset's config; an unknown name is a one-line ConfigError listing the choices."""
    return _named_preset(name)


def build_config(*, preset: str, changes: Mapping[str, object] | None = None) -> MergeVQConfig:
    """Config-file entry point: a preset with field changes, e.g. YAML
    ``{target: mergevq.tokenizer.model.build_config, params: {preset: GR-d64, changes: {drop_path: 0.1}}}``.
    An unknown preset or field is a one-line ConfigError."""
    base = _named_preset(preset)
    return base.replace(changes) if changes else base


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """What ``encode`` returns. Shapes: B images, K kept tokens, L positions, d bits, D width."""

    indices: torch.Tensor  # (B, K) int64 code indices, canonical (raster order of first occurrence)
    assign: torch.Tensor  # (B, L) int64 in [0, K): the kept token holding each position
    codes: torch.Tensor  # (B, K, d) in {-1, +1}, straight-through gradient to z
    z: torch.Tensor  # (B, K, d) pre-quantisation latents
    sizes: torch.Tensor  # (B, K) positions per kept token
    cls: torch.Tensor  # (B, D) encoder [CLS] output
    commit_loss: torch.Tensor  # scalar
    entropy_loss: torch.Tensor  # scalar: per_sample_entropy - codebook_entropy
    per_sample_entropy: torch.Tensor  # scalar (nats)
    codebook_entropy: torch.Tensor  # scalar (nats)


@dataclass
class MergeVQOutput:
    """What ``forward`` returns: the reconstruction and everything the losses need."""

    reconstruction: torch.Tensor  # (B, 3, H, W)
    encoded: Encoded
    recovery_logits: torch.Tensor | None  # (B, L, K) or None without learned recovery
    cls_feature: torch.Tensor | None  # (B, cls_dim) alignment head on the student view's [CLS]
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class MergeVQ(nn.Module):
    """The MergeVQ tokenizer. Build with ``MergeVQ(config=preset("GR-d64"))``."""

    def __init__(self, *, config: MergeVQConfig) -> None:
        super().__init__()
        _validate(config, source="MergeVQConfig")
        self.config = config
        if config.stem == "patch":
            stem: nn.Module = PatchStem(patch_size=config.patch_size, dim=config.dim)
        else:
            stem = CNNStem(ch=config.ch, ch_mult=config.ch_mult, num_res_blocks=config.enc_res_blocks)
        self.encoder = MergingEncoder(
            stem=stem, dim=config.dim, depth=config.depth, num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio, drop_path=config.drop_path, num_tokens=config.num_tokens,
            code_dim=config.code_dim,
        )
        self.quantizer = LFQ(dim=config.code_dim, entropy_temperature=config.entropy_temperature,
                             sub_token_bits=config.sub_token_bits)
        self.recovery = (
            LearnedRecovery(code_dim=config.code_dim, dim=config.dim, num_positions=config.num_tokens,
                            depth=config.recovery_depth, num_heads=config.num_heads,
                            mlp_ratio=config.mlp_ratio)
            if config.recovery_depth > 0 else None
        )
        self.decoder = Decoder(
            code_dim=config.code_dim, dim=config.dec_dim, depth=config.dec_depth, num_heads=config.dec_heads,
            mlp_ratio=config.mlp_ratio, grid=config.grid, ch=config.dec_ch, ch_mult=config.dec_ch_mult,
            num_res_blocks=config.dec_res_blocks,
        )
        self.cls_head = (
            ClsHead(in_dim=config.dim, out_dim=config.cls_dim, kind=config.cls_head) if config.cls_dim > 0 else None
        )

    # ---- sizes ------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def check_num_keep(self, num_keep: int) -> int:
        """``num_keep`` if this model can produce it, else a one-line ConfigError."""
        if isinstance(num_keep, bool) or not isinstance(num_keep, int) or not 1 <= num_keep <= self.num_tokens:
            raise ConfigError(f"num_keep={num_keep!r} is not a valid K: expected an int in [1, L={self.num_tokens}]")
        self.encoder.schedule(num_keep)  # unreachable K -> ConfigError naming the range
        return num_keep

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; ``enc`` / ``dec`` as in the DESIGN §4 table (module docstring)."""

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        counts = {"encoder": count(self.encoder), "recovery": count(self.recovery),
                  "decoder": count(self.decoder), "cls_head": count(self.cls_head)}
        counts["enc"] = counts["encoder"] + counts["cls_head"]
        counts["dec"] = counts["decoder"]
        counts["total"] = count(self)
        return counts

    # ---- encode / decode ----------------------------------------------------------------------

    def check_image_size(self, x: torch.Tensor) -> None:
        """A one-line ConfigError unless ``x`` is (B, 3, image_size, image_size): another size gives
        another token count, which would otherwise surface as a misleading K error."""
        size = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"the tokenizer expects images of shape (B, 3, {size}, {size}), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (size, size):
            raise ConfigError(
                f"image size {x.shape[-2]}x{x.shape[-1]} but the tokenizer expects {size}x{size} (its image_size); "
                f"set the data's image size (data.params.<split>.params.size or resolution) or eval.resolution "
                f"to {size}"
            )

    def encode(self, x: torch.Tensor, num_keep: int) -> Encoded:
        """x (B, 3, H, W) in [-1, 1] -> K = ``num_keep`` quantized tokens and their assignment."""
        self.check_image_size(x)
        self.check_num_keep(num_keep)
        enc = self.encoder(x, num_keep=num_keep)
        q = self.quantizer(enc.z)
        return Encoded(indices=q.indices, assign=enc.assign, codes=q.codes, z=enc.z, sizes=enc.sizes,
                       cls=enc.cls, commit_loss=q.commit_loss, entropy_loss=q.entropy_loss,
                       per_sample_entropy=q.per_sample_entropy, codebook_entropy=q.codebook_entropy)

    def decode_codes(self, codes: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
        """codes (B, K, d) + assign (B, L) -> image (B, 3, H, W): unmerge by gather, then decode."""
        return self.decoder(unmerge(codes, assign))  # (B, L, d) -> (B, 3, H, W)

    def predict_assign(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, K, d) codes -> (B, L) assignment predicted by the learned recovery."""
        if self.recovery is None:
            raise ConfigError("this tokenizer has no learned recovery (recovery_depth=0): pass assign")
        return self.recovery.predict(codes)

    def decode(self, indices: torch.Tensor, assign: torch.Tensor | None = None) -> torch.Tensor:
        """indices (B, K) [+ assign (B, L)] -> image (B, 3, H, W). Without ``assign`` the learned
        recovery predicts it from the K codes."""
        codes = self.quantizer.indices_to_codes(indices, dtype=self._dtype())
        if assign is None and codes.shape[1] == self.num_tokens:
            # K = L: nothing was merged, so every position holds its own token (no recovery needed).
            assign = torch.arange(self.num_tokens, device=codes.device).expand(codes.shape[0], -1)
        elif assign is None:
            assign = self.predict_assign(codes)
        return self.decode_codes(codes, assign)

    def decode_raster(self, indices: torch.Tensor) -> torch.Tensor:
        """An expanded (B, L) raster index grid (what MergeAR generates) -> image (B, 3, H, W)."""
        if indices.ndim != 2 or indices.shape[1] != self.num_tokens:
            raise ValueError(f"decode_raster expects (B, L={self.num_tokens}) indices, got {tuple(indices.shape)}")
        return self.decoder(self.quantizer.indices_to_codes(indices, dtype=self._dtype()))

    def set_channels_last(self, enabled: bool) -> None:
        """Run the CNN stem and the decoder's CNN on channels_last (NHWC) activations, or NCHW.

        A layout choice, not part of the architecture (not in the config; state-dict keys and values
        are unchanged): the outputs are the same up to float rounding. The convolution weights are
        stored in the same layout as their activations, so no convolution converts a weight on each
        call (on a CPU those conversions were ~9 % of a GR-d64 training step); ``save_pretrained``
        writes contiguous tensors either way."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        if isinstance(self.encoder.stem, CNNStem):
            self.encoder.stem.memory_format = fmt
        self.decoder.memory_format = fmt
        for module in self.decoder.modules():
            if isinstance(module, DepthToSpaceUpsample):
                module.channels_last = enabled
        self.to(memory_format=fmt)  # 4-D (convolution) weights only

    def forward(
        self, x: torch.Tensor, num_keep: int, *, student_view: torch.Tensor | None = None,
        with_recovery: bool = True, with_cls: bool = True,
    ) -> MergeVQOutput:
        """Reconstruct ``x`` keeping ``num_keep`` tokens and return everything the losses need.

        ``recovery_logits`` (B, L, K) train the learned recovery with cross-entropy against
        ``encoded.assign``; they are computed from detached codes, so the recovery loss does not
        shape the encoder. At K = L there is nothing to recover and they are None.
        ``with_recovery=False`` / ``with_cls=False`` skip the recovery logits / the [CLS] head (None)
        when no loss reads them. ``cls_feature``
        is the alignment head on the raw [CLS] of ``student_view`` (the strong 224 px view) when
        given, else on the reconstruction view's [CLS]. The student view merges the same number of
        tokens, L − K, as the reconstruction view (the authors' rule), so its own K differs.
        """
        encoded = self.encode(x, num_keep)
        reconstruction = self.decode_codes(encoded.codes, encoded.assign)
        logits = None
        if with_recovery and self.recovery is not None and num_keep < self.num_tokens:
            logits = self.recovery(encoded.codes.detach())
        cls_feature = None
        if with_cls and self.cls_head is not None:
            if student_view is None:
                cls = encoded.cls
            else:
                cls = self.encoder(student_view, num_merge=self.num_tokens - num_keep).cls
            cls_feature = self.cls_head(cls)
        return MergeVQOutput(reconstruction=reconstruction, encoded=encoded, recovery_logits=logits,
                             cls_feature=cls_feature)

    def _dtype(self) -> torch.dtype:
        return next(self.decoder.parameters()).dtype

    # ---- save / load ---------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``."""
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_write(directory / WEIGHTS_FILE) as handle:
            handle.write(save(state, metadata={"format": "mergevq", "version": str(FORMAT_VERSION)}))
        with atomic_write(directory / CONFIG_FILE, text=True) as handle:
            json.dump({"format_version": FORMAT_VERSION, "model": self.config.to_dict()}, handle, indent=2)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> MergeVQ:
        """Build from ``config.json`` and load ``model.safetensors`` strictly (no training code)."""

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise WeightsError(
                    f"{path} not found: expected a folder written by MergeVQ.save_pretrained or `mergevq export`"
                )
        try:
            meta = json.loads(config_path.read_text())
            model_cfg = meta["model"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise WeightsError(f"{config_path} is not a MergeVQ config ({err})") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise WeightsError(
                f"{config_path}: format_version {version!r}, this mergevq reads {FORMAT_VERSION} (format 1 is the "
                f"layout before the authors'-architecture parity; those weights compute another function, retrain)"
            )
        model = cls(config=_config_from_dict(model_cfg, source=str(config_path)))
        load_weights_strict(model, weights_path, config_path=config_path, map_location=map_location)
        return model.to(map_location)
