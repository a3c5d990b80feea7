"""The authors' MergeVQ tokenizer checkpoints (``taming.models.lfqgan_rep.MergeVQModel``) as mergevq models.

* :func:`config_from_official`: the authors' constructor arguments (or their ``ddconfig`` alone) ->
  :class:`MergeVQConfig` (``recovery_depth=0``: the authors decode through the merge assignment).
* :data:`OFFICIAL_VARIANTS`: the six released configurations by the authors' names (``G_d32`` ...
  ``R``) -> our presets with ``recovery_depth=0``.
* :func:`convert_state_dict`: an authors' Lightning checkpoint dict (with ``state_dict``) or a bare
  state dict -> our state dict plus a report. The mapping is one table of key templates
  (:data:`KEY_RULES`): every key of our model is matched against it to name the authors' key it
  comes from, so a key of theirs that no key of ours claims is reported, never guessed.

Weights: the authors' ``LitEma`` keeps a copy of every trainable parameter of the Lightning module as a
buffer ``model_ema.<name without dots>`` (and ``model_ema.decay`` / ``model_ema.num_updates``).
``weights="auto"`` (the default) takes those EMA weights when the checkpoint has them and the raw ones
otherwise, and says which in the report; ``"ema"`` demands them (an error without); ``"raw"`` ignores them.
A parameter that has no EMA copy (it was frozen in training) keeps its raw value, as ``LitEma.copy_to``
does; the report counts those.

What is dropped on purpose, and counted: the discriminator / LPIPS (``loss.*``), the frozen DINOv2
teacher (``dist_model.*``), their EMA copies, and the EMA bookkeeping. Any other key that has no place in
our model, any key of our model left without a value, and any shape that does not fit is a one-line
:class:`~mergevq.errors.WeightsError` naming the keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.model import PRESETS, MergeVQ, MergeVQConfig

__all__ = ["KEY_RULES", "OFFICIAL_VARIANTS", "Converted", "config_from_official", "convert_state_dict",
           "official_keys", "resolve_config"]

# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------

OFFICIAL_VARIANTS: dict[str, MergeVQConfig] = {
    official: PRESETS[ours].replace({"recovery_depth": 0})
    for official, ours in (("G_d32", "G-d32"), ("G_d64", "G-d64"), ("GR_d32", "GR-d32"), ("GR_d64", "GR-d64"),
                           ("GR_d96", "GR-d96"), ("R", "R"))
}

# ddconfig keys the conversion knows (any other is refused: it might change the function)
_DDCONFIG_KEYS = {
    "ch", "ch_mult", "num_res_blocks", "num_res_extra", "num_att_blocks", "num_heads", "head_dim", "isotropic",
    "resolution", "z_channels", "in_channels", "out_ch", "dist_head", "num_classes", "merge_num", "merge_ratio",
    "cand_distribution", "drop_path", "num_rep_blocks", "use_conv_shortcut",
    # no effect on the function: a flag of the VQGAN encoder the authors ignore, the flash-attention switch
    # (same math), and the timm weights used only to initialise training
    "double_z", "use_flash_attn", "model_path",
}


def _unwrap_constructor_args(args: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """(ddconfig, the top-level constructor arguments or None when only a ddconfig was given)."""
    for wrapper in ("init_args", "params"):  # a YAML ``model`` node
        if isinstance(args.get(wrapper), Mapping):
            return _unwrap_constructor_args(args[wrapper])
    if "ddconfig" in args:
        if not isinstance(args["ddconfig"], Mapping):
            raise ConfigError(f"official config: ddconfig must be a mapping, got {type(args['ddconfig']).__name__}")
        return args["ddconfig"], args
    return args, None


def _int(dd: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = dd.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"official ddconfig.{key}: expected an int, got {value!r}")
    return value


def _candidates(dd: Mapping[str, Any], num_tokens: int, merge_num: int) -> tuple[int, ...]:
    """The training K candidates of ``cand_distribution`` ('gaussian-6' ...), as the authors list them."""
    spec = dd.get("cand_distribution")
    if spec is None:
        return (num_tokens - merge_num,)
    if not isinstance(spec, str):
        raise ConfigError(f"official ddconfig.cand_distribution: expected a string like 'gaussian-6', got {spec!r}")
    parts = spec.split("-")
    name, count = (parts[0], int(parts[-1])) if len(parts) == 2 and parts[-1].isdigit() else (parts[0], 5)
    bias = 1 if name.lower() == "gaussian" else 0
    side = (num_tokens - merge_num) ** 0.5
    return tuple(int((side + i) ** 2) for i in range(-bias, count - bias))


def config_from_official(constructor_args: Mapping[str, Any]) -> MergeVQConfig:
    """The authors' ``MergeVQModel(**constructor_args)`` (or its ``ddconfig`` alone, or a YAML ``model``
    node with ``init_args``) as a :class:`MergeVQConfig` computing the same function, with
    ``num_keep = L - merge_num`` and ``recovery_depth=0``. An option the port does not implement is a
    one-line ConfigError."""
    if not isinstance(constructor_args, Mapping):
        raise ConfigError(f"official config: expected a mapping, got {type(constructor_args).__name__}")
    dd, top = _unwrap_constructor_args(constructor_args)
    unknown = sorted(set(dd) - _DDCONFIG_KEYS)
    if unknown:
        raise ConfigError(f"official ddconfig: unsupported key(s) {', '.join(unknown)}")
    if top is not None:
        k2l = top.get("k2lconfig")
        if k2l is None:
            raise ConfigError("official config: no k2lconfig, so the authors build their plain VQGAN "
                              "Encoder/Decoder, not MergeVQ; not supported")
        if not isinstance(k2l, Mapping) or k2l.get("learn_source", False):
            raise ConfigError("official k2lconfig.learn_source=True (the learned source recovery) is not supported")
        if top.get("token_factorization", False):
            raise ConfigError("official token_factorization=True is not supported")
        embed_dim, n_embed = top.get("embed_dim", 18), top.get("n_embed", 2 ** 18)
        if embed_dim != dd.get("z_channels", 18) or n_embed != 2 ** embed_dim:
            raise ConfigError(f"official embed_dim={embed_dim}, n_embed={n_embed}, ddconfig.z_channels="
                              f"{dd.get('z_channels', 18)}: expected n_embed = 2**embed_dim and z_channels = embed_dim")
    if _int(dd, "in_channels", 3) != 3 or _int(dd, "out_ch", 3) != 3:
        raise ConfigError("official ddconfig: only in_channels = out_ch = 3 is supported")
    if dd.get("num_rep_blocks", 0):
        raise ConfigError(f"official ddconfig.num_rep_blocks={dd['num_rep_blocks']!r} (a ViT before the [CLS] "
                          "head) is not supported")
    if dd.get("use_conv_shortcut", False):
        raise ConfigError("official ddconfig.use_conv_shortcut=True is not supported")
    if dd.get("merge_ratio") is not None:
        raise ConfigError("official ddconfig.merge_ratio is not supported; give merge_num")
    if "merge_num" not in dd:
        raise ConfigError("official ddconfig: merge_num is required")

    ch, resolution, depth = _int(dd, "ch"), _int(dd, "resolution", 256), _int(dd, "num_att_blocks", 12)
    ch_mult = dd.get("ch_mult", (1, 2, 4, 8))
    if not isinstance(ch_mult, (list, tuple)) or not ch_mult or not all(
            isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in ch_mult):
        raise ConfigError(f"official ddconfig.ch_mult: expected a list of positive ints, got {ch_mult!r}")
    levels = len(ch_mult)
    blocks = dd.get("num_res_blocks", 2)
    extra = _int(dd, "num_res_extra", 1)
    if isinstance(blocks, (list, tuple)):
        if len(blocks) != levels or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
            raise ConfigError(f"official ddconfig.num_res_blocks: expected {levels} ints, got {blocks!r}")
        enc_blocks = dec_blocks = tuple(blocks)  # a list is used as it is by both (no extra block)
    else:
        count = _int(dd, "num_res_blocks", 2)
        enc_blocks = (count,) * levels
        dec_blocks = (count,) + (count + extra,) * (levels - 1)  # finest level first
    side = resolution // 2 ** (levels - 1)
    cnn_dim = ch * ch_mult[-1]
    isotropic = dd.get("isotropic", False)
    heads, head_dim = _int(dd, "num_heads", 8), dd.get("head_dim")

    def num_heads(width: int) -> int:
        return heads if head_dim is None else max(width // head_dim, heads)

    if isotropic:
        dim = isotropic if isinstance(isotropic, int) and not isinstance(isotropic, bool) and isotropic > 1 else cnn_dim
        stem = {"stem": "patch", "patch_size": resolution // side, "ch": 0, "ch_mult": (), "enc_res_blocks": ()}
    else:
        dim = cnn_dim
        stem = {"stem": "cnn", "ch": ch, "ch_mult": tuple(ch_mult), "enc_res_blocks": enc_blocks}
    merge_num = _int(dd, "merge_num")
    num_tokens = side * side
    num_keep = num_tokens - merge_num
    if not 1 <= num_keep <= num_tokens or math.isqrt(num_keep) ** 2 != num_keep:
        raise ConfigError(f"official ddconfig.merge_num={merge_num}: keeps {num_keep} of L={num_tokens} tokens, "
                          "which the authors' encoder cannot reshape to a square grid")
    dist_head = dd.get("dist_head")
    code_dim = _int(dd, "z_channels", 18)
    default_bits = MergeVQConfig().sub_token_bits
    fields: dict[str, Any] = dict(
        image_size=resolution, **stem, dim=dim, depth=depth, num_heads=num_heads(dim), mlp_ratio=4.0,
        drop_path=float(dd.get("drop_path", 0.0)), code_dim=code_dim,
        sub_token_bits=default_bits if sum(default_bits) == code_dim else (code_dim,),
        entropy_temperature=0.01, recovery_depth=0,
        dec_dim=cnn_dim, dec_depth=depth, dec_heads=num_heads(cnn_dim), dec_ch=ch, dec_ch_mult=tuple(ch_mult),
        dec_res_blocks=dec_blocks,
        cls_dim=(dd.get("num_classes") or dim) if dist_head else 0,
        cls_head="mlp3" if dist_head == "layer3" else "mlp_ln",
        num_keep=num_keep, k_candidates=_candidates(dd, num_tokens, merge_num),
    )
    return MergeVQConfig().replace(fields)


def resolve_config(variant: str | MergeVQConfig) -> MergeVQConfig:
    """An :data:`OFFICIAL_VARIANTS` name or a config -> the config (an unknown name is one line)."""
    if isinstance(variant, MergeVQConfig):
        return variant
    if variant not in OFFICIAL_VARIANTS:
        raise ConfigError(f"unknown official variant {variant!r}; valid: {', '.join(OFFICIAL_VARIANTS)}")
    return OFFICIAL_VARIANTS[variant]


# --------------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------------

# Field patterns of the templates below. ``u`` (a decoder level) counts from the finest level in the
# authors' numbering and from the coarsest in ours: it is mirrored (n - 1 - u).
# ``h`` (a layer of the [CLS] head) is an nn.Sequential index on their side and a name on ours.
_FIELDS = {
    "i": r"\d+", "j": r"\d+", "u": r"\d+", "h": r"\w+", "w": r"weight|bias", "rest": r"[\w.]+",
    "res": r"norm1|norm2|conv1|conv2", "ada": r"gamma|beta", "out": r"norm_out|conv_out",
}
_HEAD_LAYERS = {"mlp3": {"0": "fc1", "2": "fc2", "4": "fc3"}, "mlp_ln": {"0": "fc1", "2": "norm", "3": "fc2"}}


@dataclass(frozen=True)
class KeyRule:
    """One authors' key template and ours; ``reshape``: the tensor is reshaped to our shape (a 1x1
    conv weight that is a Linear weight here)."""

    official: str
    ours: str
    reshape: bool = False


KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule("encoder.conv_in.weight", "encoder.stem.conv_in.weight"),  # CNN stem (G, GR)
    KeyRule("encoder.conv_in.0.{w}", "encoder.stem.proj.{w}"),  # patch stem (R)
    KeyRule("encoder.conv_in.1.{w}", "encoder.stem.norm.{w}"),
    KeyRule("encoder.down.{i}.block.{j}.{res}.{w}", "encoder.stem.levels.{i}.blocks.{j}.{res}.{w}"),
    KeyRule("encoder.down.{i}.block.{j}.nin_shortcut.{w}", "encoder.stem.levels.{i}.blocks.{j}.shortcut.{w}"),
    KeyRule("encoder.down.{i}.downsample.{w}", "encoder.stem.levels.{i}.downsample.{w}"),
    KeyRule("encoder.attn.cls_token", "encoder.cls_token"),
    KeyRule("encoder.attn.blocks.{i}.{rest}", "encoder.blocks.{i}.{rest}"),
    KeyRule("encoder.norm_out.{w}", "encoder.pre_quant.norm.{w}"),
    KeyRule("encoder.conv_out.{w}", "encoder.pre_quant.proj.{w}", reshape=True),
    KeyRule("encoder.dist_head.{h}.{w}", "cls_head.{h}.{w}"),
    KeyRule("decoder.conv_in.{w}", "decoder.conv_in.{w}"),
    KeyRule("decoder.attn.pos_embed.{w}", "decoder.pos_conv.{w}"),
    KeyRule("decoder.attn.blocks.{i}.{rest}", "decoder.blocks.{i}.{rest}"),
    KeyRule("decoder.adaptive.{u}.{ada}.{w}", "decoder.levels.{u}.adagn.{ada}.{w}"),
    KeyRule("decoder.up.{u}.block.{j}.{res}.{w}", "decoder.levels.{u}.blocks.{j}.{res}.{w}"),
    KeyRule("decoder.up.{u}.block.{j}.nin_shortcut.{w}", "decoder.levels.{u}.blocks.{j}.shortcut.{w}"),
    KeyRule("decoder.up.{u}.upsample.conv1.{w}", "decoder.levels.{u}.upsample.conv.{w}"),
    KeyRule("decoder.{out}.{w}", "decoder.{out}.{w}"),
)


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})"
                              for k, p in enumerate(parts)) + r"\Z")


_COMPILED = tuple((rule, _compile(rule.ours)) for rule in KEY_RULES)


def _to_official(config: MergeVQConfig) -> Callable[[str], tuple[str, bool] | None]:
    """A function: our key -> (the authors' key, reshape), or None when no rule applies."""
    levels = len(config.dec_ch_mult)
    head = {ours: theirs for theirs, ours in _HEAD_LAYERS[config.cls_head].items()}

    def translate(key: str) -> tuple[str, bool] | None:
        for rule, pattern in _COMPILED:
            match = pattern.match(key)
            if match is None:
                continue
            values = match.groupdict()
            if "u" in values:
                values["u"] = str(levels - 1 - int(values["u"]))
            if "h" in values:
                if values["h"] not in head:
                    return None
                values["h"] = head[values["h"]]
            return rule.official.format(**values), rule.reshape
        return None

    return translate


def official_keys(config: MergeVQConfig) -> dict[str, str]:
    """{the authors' key: our key} for every entry of our state dict."""
    return {theirs: ours for theirs, (ours, _) in _key_table(config, _expected_shapes(config)).items()}


def _key_table(config: MergeVQConfig, expected: Mapping[str, torch.Size]) -> dict[str, tuple[str, bool]]:
    """{the authors' key: (our key, reshape)} for every key of our model."""
    to_official = _to_official(config)
    table = {}
    for key in expected:
        found = to_official(key)
        if found is None:
            raise WeightsError(f"our {key!r} has no authors' counterpart: the config has a part the authors' "
                               "model lacks (converted models need recovery_depth=0)")
        table[found[0]] = (key, found[1])
    return table


def _expected_shapes(config: MergeVQConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = MergeVQ(config=config)
    return {k: v.shape for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# state dicts
# --------------------------------------------------------------------------------------------------

EMA_PREFIX = "model_ema."
_EMA_BOOKKEEPING = ("decay", "num_updates")
# Training-only by design: the discriminator and LPIPS, the frozen teacher (and their EMA copies).
_TRAINING_ONLY = (("loss.", "loss"), ("dist_model.", "teacher"))
_SHOWN = 5


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_state_dict` returns."""

    state_dict: dict[str, torch.Tensor]  # our keys
    config: MergeVQConfig
    weights: Literal["ema", "raw"]  # which copy the parameters come from
    dropped: dict[str, int]  # training-only keys left out, per kind: loss, teacher, ema_loss, ema_bookkeeping ...
    raw_fallback: int = 0  # parameters taken raw because the EMA held no copy of them (frozen in training)
    note: str = ""  # e.g. "no EMA weights in the checkpoint: raw weights"

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {kind}" for kind, n in sorted(self.dropped.items()) if n) or "none"
        text = (f"{len(self.state_dict)} tensors ({sum(v.numel() for v in self.state_dict.values()):,} values), "
                f"{self.weights.upper()} weights; dropped training-only keys: {dropped}")
        if self.raw_fallback:
            text += f"; {self.raw_fallback} parameters without an EMA copy taken raw"
        return f"{text}; {self.note}" if self.note else text


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _training_only(key: str, *, dotless: bool = False) -> str | None:
    """The kind of a training-only key (``dotless``: an EMA buffer name, LitEma's dots removed), else None."""
    for prefix, kind in _TRAINING_ONLY:
        if key.startswith(prefix.replace(".", "") if dotless else prefix):
            return kind
    return None


def convert_state_dict(
    state: Mapping[str, Any],
    variant: str | MergeVQConfig,
    *,
    weights: Literal["auto", "ema", "raw"] = "auto",
) -> Converted:
    """The authors' checkpoint (a Lightning dict with ``state_dict``, or a bare state dict with keys
    ``encoder.*`` / ``decoder.*`` and possibly ``loss.*``, ``dist_model.*``, ``model_ema.*``) as a state
    dict of ``MergeVQ(config=resolve_config(variant))``, which loads it with ``strict=True``.

    ``weights``: "auto" = the EMA weights when present, else the raw ones (``Converted.note`` says so);
    "ema" = the EMA weights, an error when the checkpoint has none; "raw" = the raw weights.
    Every problem is a one-line WeightsError (or ConfigError for a bad ``variant`` / ``weights``)."""
    if weights not in ("auto", "ema", "raw"):
        raise ConfigError(f"weights={weights!r}; valid: auto, ema, raw")
    config = resolve_config(variant)
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"not a state dict: {len(bad)} entries are not tensors under string keys "
                           f"({_listing([str(k) for k in bad])})")

    expected = _expected_shapes(config)
    theirs = _key_table(config, expected)  # the authors' key -> (our key, reshape)
    dotless = {k.replace(".", ""): k for k in theirs}
    if len(dotless) != len(theirs):
        raise WeightsError("the authors' EMA names of this config are ambiguous (two keys equal without dots)")

    dropped: dict[str, int] = {}
    raw: dict[str, torch.Tensor] = {}
    ema: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        kind = _training_only(key)
        if kind is not None:
            dropped[kind] = dropped.get(kind, 0) + 1
        elif key.startswith(EMA_PREFIX):
            name = key[len(EMA_PREFIX):]
            if name in _EMA_BOOKKEEPING:
                dropped["ema_bookkeeping"] = dropped.get("ema_bookkeeping", 0) + 1
            elif name in dotless:
                ema[dotless[name]] = value
            elif _training_only(name, dotless=True):
                kind = f"ema_{_training_only(name, dotless=True)}"
                dropped[kind] = dropped.get(kind, 0) + 1
            else:
                unknown.append(key)
        elif key in theirs:
            raw[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{len(unknown)} key(s) of the checkpoint have no place in the {_name(variant)} model: "
                           f"{_listing(unknown)}")

    note, raw_fallback = "", 0
    if weights == "ema" and not ema:
        raise WeightsError("weights='ema' but the checkpoint holds no EMA weights (model_ema.*); use raw or auto")
    use_ema = bool(ema) and weights != "raw"
    if weights == "auto" and not ema:
        note = "the checkpoint holds no EMA weights (model_ema.*): raw weights used"
    chosen = dict(raw)
    if use_ema:
        raw_fallback = sum(1 for k in raw if k not in ema)
        chosen.update(ema)
    elif ema:
        dropped["ema_unused"] = len(ema)
    missing = [k for k in theirs if k not in chosen]
    if missing:
        raise WeightsError(f"{len(missing)} key(s) of the {_name(variant)} model are missing from the checkpoint: "
                           f"{_listing(missing)}")

    out: dict[str, torch.Tensor] = {}
    for key, value in chosen.items():
        ours, reshape = theirs[key]
        shape = expected[ours]
        if value.shape != shape:
            if not (reshape and value.numel() == math.prod(shape)):
                raise WeightsError(f"{key}: shape {tuple(value.shape)} in the checkpoint, {tuple(shape)} expected by "
                                   f"the {_name(variant)} model ({ours})")
            value = value.reshape(shape)
        out[ours] = value.detach().clone().contiguous()
    return Converted(state_dict=out, config=config, weights="ema" if use_ema else "raw", dropped=dropped,
                     raw_fallback=raw_fallback, note=note)


def _name(variant: str | MergeVQConfig) -> str:
    return variant if isinstance(variant, str) else "configured"

