"""Config loading, composition, overrides and object instantiation (DESIGN §8).

Conventions
-----------
* Configs are OmegaConf YAML files. Every object is a node ``{target: dotted.path, params: {...}}``
  (``params`` optional); no other keys are allowed in such a node.
* A file may start with ``defaults: [a.yaml, sub/b.yaml]``. Each entry is looked up relative to
  the including file's directory first, then relative to the configs root (the nearest ancestor
  directory named ``configs``); a missing ``.yaml`` suffix is added. Defaults are merged first
  (depth-first, in list order), then the file's own content on top; the ``defaults`` key is
  dropped from the result. Including a file twice (a diamond) is fine; a cycle is an error.
* Config groups: every sub-folder of the configs root is a group (``data``, ``trainer`` ...); an
  override ``GROUP=NAME`` (no dot) picks ``GROUP/NAME.yaml``, replacing in place each ``defaults:``
  entry of that group in the composition (or, when there is none, merged after the first file's
  defaults and before its own keys), e.g. ``data=folder`` or ``trainer=npu8_bf16``.
* Several files given to :func:`load` are merged in order; command-line overrides come last.
  ``key.path=value`` sets an existing key (a typo is an error with suggestions);
  ``+key.path=value`` may add a new key. Values are parsed as YAML (``=3``, ``=[1,2]``, ``=null``,
  ``=1e-4`` is a float); ``key=`` sets the empty string.
* :func:`instantiate` imports ``target``, builds nested nodes inside ``params`` depth-first
  (lists element-wise; other mappings become plain dicts, so constructors only ever see plain
  Python values) and checks every key of the whole tree against the constructor signatures, and
  every value against the parameter's type annotation, *before* anything is built. A mapping with a
  ``target`` key is always an object node. A ``ConfigError`` / ``ValueError`` a constructor raises
  about its arguments comes out as one line naming the node's file and key path.
* Trust: ``allowed`` (a set of exact dotted names, e.g. :data:`mergevq.trust.TRUSTED_TARGETS`)
  restricts what a config may build; every ``target`` of the tree is checked against it before
  anything is imported. Configs read from checkpoints, run or export folders pass it
  (:func:`from_yaml_with_origins` gives them a source for messages); YAML from the user does not.
* The resolved config is written to ``<run_dir>/config.yaml`` with :func:`save` (atomically).

Provenance (which file set which key) is returned, never stashed in global state:
:func:`load_with_origins` returns a :class:`LoadedConfig` holding the config, the files read in
merge order and ``origins``: a map from each leaf key path (``"data.params.train.params.root"``)
to the file that set it last, or ``"command line"``. Pass ``origins`` to :func:`instantiate`, or use
:meth:`LoadedConfig.instantiate`, so errors name the file at fault::

    loaded = load_with_origins(["configs/demo/tokenizer.yaml"], overrides=["trainer.max_steps=10"])
    model = loaded.instantiate("model")          # errors name e.g. configs/tokenizer/base.yaml
    save(loaded.cfg, run_dir)

:func:`load` is the same without provenance. Every user error raises :class:`ConfigError` with a
one-line message naming the file, the key path and what is expected.
"""

from __future__ import annotations

import collections.abc as abc
import contextlib
import difflib
import importlib
import inspect
import os
import pkgutil
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mergevq.errors import ConfigError
from mergevq.fileio import atomic_write

__all__ = [
    "COMMAND_LINE",
    "CONFIG_FILENAME",
    "LoadedConfig",
    "check_types",
    "from_yaml",
    "from_yaml_with_origins",
    "instantiate",
    "load",
    "load_with_origins",
    "save",
    "to_yaml",
    "validate",
]

PathLike = Union[str, "os.PathLike[str]"]

COMMAND_LINE = "command line"
"""Origin recorded for keys set by overrides."""

CONFIG_FILENAME = "config.yaml"
"""Name of the resolved config written into a run directory by :func:`save`."""

_NODE_KEYS = ("target", "params")
_UNKNOWN_ORIGIN = "<config>"
_CONFIGS_DIRNAME = "configs"


# --------------------------------------------------------------------------------------------------
# small helpers


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> ConfigError:
    return ConfigError(_one_line(message))


def _display(path: Path) -> str:
    """A path as shown in messages: relative to the working directory when below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def _ordered_choices(word: str, choices: Sequence[str]) -> list[str]:
    """All choices, the closest to ``word`` first, the others in their original order."""
    close = _closest(word, choices)
    return close + [c for c in choices if c not in close]


# --------------------------------------------------------------------------------------------------
# YAML reading


class _Loader(yaml.SafeLoader):
    """Safe YAML loader with OmegaConf-like scalars: ``1e-4`` is a float, dates stay strings, and a
    duplicate key is an error rather than silently keeping the last value."""

    def construct_mapping(  # type: ignore[override]
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor(
    "tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node)
)


def _parse_yaml(text: str, *, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise _error(f"{where}: invalid YAML: {detail}") from None


def _read_file(path: Path) -> dict:
    shown = _display(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _error(f"{shown}: cannot read config file: {exc}") from None
    data = _parse_yaml(text, source=shown)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _error(
            f"{shown}: the top level of a config file must be a mapping of keys, "
            f"got {type(data).__name__}"
        )
    return data


def _create(data: Any, *, source: str) -> Any:
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        raise _error(f"{source}: not a valid config: {exc}") from None


# --------------------------------------------------------------------------------------------------
# provenance


def _drop_subtree(origins: dict[str, str], path: str) -> None:
    prefix = path + "."
    for key in [k for k in origins if k == path or k.startswith(prefix)]:
        del origins[key]


def _record(origins: dict[str, str], data: Mapping, source: str, prefix: str = "") -> None:
    """Record ``source`` as the origin of every leaf of ``data`` (merged on top of what came before,
    with OmegaConf merge semantics: mappings merge, everything else replaces)."""
    for key, value in data.items():
        path = _join(prefix, key)
        if isinstance(value, Mapping) and value:
            origins.pop(path, None)
            _record(origins, value, source, path)
        elif isinstance(value, Mapping):
            # An empty mapping merged onto an existing mapping changes nothing.
            if not any(k == path or k.startswith(path + ".") for k in origins):
                origins[path] = source
        else:
            _drop_subtree(origins, path)
            origins[path] = source


def _origin(origins: Mapping[str, str] | None, path: str) -> str:
    """The file that set ``path`` (or the nearest key around it)."""
    if not origins:
        return _UNKNOWN_ORIGIN
    if path in origins:
        return origins[path]
    prefix = path + "."
    for key, source in origins.items():
        if key.startswith(prefix):
            return source
    while "." in path:
        path = path.rsplit(".", 1)[0]
        if path in origins:
            return origins[path]
    return _UNKNOWN_ORIGIN


# --------------------------------------------------------------------------------------------------
# composition


def _configs_root(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.name == _CONFIGS_DIRNAME:
            return parent
    return None


def _resolve_default(entry: str, including: Path) -> Path:
    relative = Path(entry)
    bases = [including.parent]
    root = _configs_root(including)
    if root is not None and root != including.parent:
        bases.append(root)
    names = (
        [relative] if relative.suffix else [relative, relative.with_name(relative.name + ".yaml")]
    )
    tried: list[Path] = []
    for base in bases if not relative.is_absolute() else [Path("/")]:
        for name in names:
            candidate = (base / name).resolve()
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    looked = ", ".join(_display(p) for p in tried)
    raise _error(
        f"{_display(including)}: key 'defaults': config file '{entry}' not found "
        f"(looked in: {looked})"
    )


def _defaults_list(value: Any, path: Path) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _error(
            f"{_display(path)}: key 'defaults' must be a list of config file names "
            f"(e.g. defaults: [base.yaml, data/imagenet.yaml]), got {value!r}"
        )
    return value


@dataclass
class _GroupChoice:
    """``GROUP=NAME`` on the command line: configs/GROUP/NAME.yaml replaces the composition's
    ``defaults:`` entries of that group (``used``: one was replaced)."""

    text: str
    group: str
    path: Path
    used: bool = False


def _in_group(child: Path, group: str, roots: Sequence[Path]) -> bool:
    """Whether ``child`` is a file of the config group ``group`` (``<configs root>/group/*.yaml``)."""
    folder = child.parent
    return folder.name == group and (folder.parent in roots or folder.parent.name == _CONFIGS_DIRNAME)


def _choose(child: Path, including: Path, choices: Mapping[str, _GroupChoice], roots: Sequence[Path]) -> Path:
    """``child`` (a defaults entry of ``including``), or the group file chosen in its place. A file
    inside the group folder itself keeps its entries (trainer/npu8_bf16.yaml composes gpu8_bf16.yaml)."""
    for choice in choices.values():
        if _in_group(child, choice.group, roots) and including.parent != child.parent:
            choice.used = True
            return choice.path
    return child


def _compose(
    path: Path,
    *,
    chain: tuple[Path, ...],
    files: list[str],
    origins: dict[str, str],
    choices: Mapping[str, _GroupChoice] | None = None,
    roots: Sequence[Path] = (),
    appended: Sequence[_GroupChoice] = (),
) -> DictConfig:
    """``path`` with its defaults (group choices applied), then ``appended`` group files (merged
    after the defaults, before the file's own keys), then the file's own keys."""
    if path in chain:
        cycle = " -> ".join(_display(p) for p in (*chain[chain.index(path) :], path))
        raise _error(f"{_display(path)}: key 'defaults': cycle in config defaults: {cycle}")
    data = _read_file(path)
    defaults = _defaults_list(data.pop("defaults", None), path)
    result = OmegaConf.create({})
    children = [_resolve_default(entry, path) for entry in defaults]
    if choices:
        children = [_choose(child, path, choices, roots) for child in children]
    children += [choice.path for choice in appended]
    for child in children:
        composed = _compose(
            child, chain=(*chain, path), files=files, origins=origins, choices=choices, roots=roots
        )
        result = _merge(result, composed, source=_display(child))
    shown = _display(path)
    files.append(str(path))
    _record(origins, data, shown)
    return _merge(result, _create(data, source=shown), source=shown)


def _merge(base: DictConfig, top: DictConfig, *, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, top)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise _error(
            f"{source}: key '{key}' cannot be merged onto the earlier configs: {exc}"
        ) from None
    assert isinstance(merged, DictConfig)
    return merged


# --------------------------------------------------------------------------------------------------
# overrides


def _all_paths(data: Any, prefix: str = "") -> list[str]:
    paths: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = _join(prefix, key)
            paths.append(path)
            paths.extend(_all_paths(value, path))
    return paths


def _lookup(data: Any, parts: Sequence[str]) -> tuple[bool, int]:
    """Whether ``parts`` exists in the plain container ``data``; also how many parts matched."""
    node = data
    for depth, part in enumerate(parts):
        if isinstance(node, Mapping):
            if part in node:
                node = node[part]
                continue
            with contextlib.suppress(ValueError):
                if int(part) in node:
                    node = node[int(part)]
                    continue
            return False, depth
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        return False, depth
    return True, len(parts)


def _parse_override(text: str) -> tuple[str, bool, Any]:
    if "=" not in text:
        raise _error(
            f"override '{text}' is malformed: expected key.path=value "
            "(or +key.path=value to add a key)"
        )
    key, _, raw = text.partition("=")
    key = key.strip()
    add = key.startswith("+")
    if add:
        key = key[1:]
    if not key or any(not part.strip() or part != part.strip() for part in key.split(".")):
        raise _error(
            f"override '{text}' is malformed: expected key.path=value with a dotted key path"
        )
    value = "" if raw == "" else _parse_yaml(raw, source=f"override '{text}'")
    return key, add, value


def _apply_override(
    cfg: DictConfig, text: str, *, files: Sequence[str], origins: dict[str, str]
) -> None:
    key, add, value = _parse_override(text)
    plain = OmegaConf.to_container(cfg, resolve=False)
    parts = key.split(".")
    exists, depth = _lookup(plain, parts)
    if not exists and add and depth > 0:
        parent = ".".join(parts[:depth])
        node = OmegaConf.select(cfg, parent, throw_on_missing=False)
        if not isinstance(node, DictConfig):  # OmegaConf would silently replace it by a mapping
            kind = "a list" if isinstance(node, ListConfig) else "a value"
            raise _error(
                f"override '{text}': cannot add key '{key}': '{parent}' (set in "
                f"{_origin(origins, parent)}) is {kind}, not a mapping"
            )
    if not exists and not add:
        paths = _all_paths(plain)
        suggestions = _closest(key, paths, n=5)
        if not suggestions:  # nothing similar: list the keys that do exist where the path stopped
            parent = ".".join(parts[:depth])
            suggestions = [
                p
                for p in paths
                if p.count(".") == depth and p.startswith(f"{parent}." if parent else "")
            ]
        hint = (
            f"closest valid keys: {', '.join(suggestions[:8])}"
            if suggestions
            else "no keys exist at that level"
        )
        raise _error(
            f"override '{text}': key '{key}' does not exist in the config loaded from "
            f"{', '.join(_display(Path(f)) for f in files)}; {hint}; write '+{key}=...' to add a new key"
        )
    try:
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    except OmegaConfBaseException as exc:
        raise _error(f"override '{text}': cannot set key '{key}': {exc}") from None
    _drop_subtree(origins, key)
    if isinstance(value, Mapping) and value:
        _record(origins, value, COMMAND_LINE, key)
    else:
        origins[key] = COMMAND_LINE


# --------------------------------------------------------------------------------------------------
# public: loading


@dataclass(frozen=True)
class LoadedConfig:
    """A composed config with its provenance.

    ``files``: the absolute paths of the files read, in composition order (``defaults:`` first,
    as merged). ``origins``: leaf key path -> the file that set it
    last (or :data:`COMMAND_LINE`).
    """

    cfg: DictConfig
    files: tuple[str, ...]
    origins: Mapping[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        """The file that set ``key`` (or the nearest enclosing key)."""
        return _origin(self.origins, key)

    def select(self, key: str) -> Any:
        """The node at dotted ``key``; a missing key is a :class:`ConfigError` with suggestions."""
        plain = OmegaConf.to_container(self.cfg, resolve=False)
        exists, _ = _lookup(plain, key.split("."))
        if not exists:
            close = _closest(key, _all_paths(plain))
            hint = f"; closest valid keys: {', '.join(close)}" if close else ""
            raise _error(
                f"key '{key}' is not in the config loaded from {', '.join(self.files)}{hint}"
            )
        try:
            return OmegaConf.select(self.cfg, key, throw_on_missing=True)
        except OmegaConfBaseException as exc:
            raise _error(f"{self.origin(key)}: key '{key}' cannot be resolved: {exc}") from None

    def validate(self, key: str, *, allowed: AbstractSet[str] | None = None) -> None:
        """Check the node at ``key`` (targets import, keys match signatures, values match
        annotations); build nothing. ``allowed``: see :func:`instantiate`."""
        validate(self.select(key), key=key, origins=self.origins, allowed=allowed)

    def instantiate(
        self,
        key: str,
        *,
        extra: Mapping[str, Any] | None = None,
        allowed: AbstractSet[str] | None = None,
    ) -> Any:
        """Build the object node at ``key``; see :func:`instantiate`."""
        return instantiate(
            self.select(key), key=key, origins=self.origins, extra=extra, allowed=allowed
        )

    def target(self, key: str, *, allowed: AbstractSet[str] | None = None) -> str:
        """The ``target`` of the object node at ``key``, checked against ``allowed`` (when given)
        and not imported: for a caller that only needs to know what a config would build."""
        node = _as_node(self.select(key), key)
        target, _ = _node_parts(node, key, self.origins)
        if allowed is not None:
            _refuse_unless_allowed(target, _join(key, "target"), self.origins, allowed)
        return target


def _group_roots(paths: Sequence[Path]) -> list[Path]:
    """Where config groups are looked up: the configs root of the first file, then
    :func:`mergevq.paths.config_roots`."""
    from mergevq.paths import config_roots

    roots: list[Path] = []
    first = _configs_root(paths[0]) if paths else None
    if first is not None:
        roots.append(first)
    roots.extend(config_roots())
    return list(dict.fromkeys(roots))


def _group_names(group: str, roots: Sequence[Path]) -> list[str]:
    names = {p.stem for root in roots if (root / group).is_dir() for p in (root / group).glob("*.yaml")}
    return sorted(names)


def _group_choice(text: str, roots: Sequence[Path]) -> _GroupChoice | None:
    """``GROUP=NAME`` when GROUP (no dot, no '+') is a folder of a configs root: NAME is a file of
    that folder (``.yaml`` optional) or the path of a YAML file. None: an ordinary key override."""
    group, sep, name = text.partition("=")
    group = group.strip()
    if not sep or not group or group.startswith("+") or "." in group:
        return None
    if not any((root / group).is_dir() for root in roots):
        return None
    name = name.strip()
    given = Path(name).expanduser()
    if name and given.suffix in (".yaml", ".yml") and given.is_file():
        return _GroupChoice(text=text, group=group, path=given.resolve())
    for root in roots:
        for candidate in (root / group / name, root / group / f"{name}.yaml"):
            if name and "/" not in name and candidate.is_file():
                return _GroupChoice(text=text, group=group, path=candidate.resolve())
    available = ", ".join(_group_names(group, roots)) or "none"
    folders = ", ".join(_display(root / group) for root in roots if (root / group).is_dir())
    raise _error(
        f"override '{text}': '{name}' is not a config of the group '{group}' ({folders}); "
        f"available: {available} (or the path of a .yaml file)"
    )


def _check_appended(
    cfg: DictConfig, appended: Sequence[_GroupChoice], origins: Mapping[str, str]
) -> None:
    """A group file merged into a config that has no defaults entry of its group must not meet
    another ``target`` on the same node (``cfg``: the config composed without it): that would mix
    two objects' parameters (e.g. ``data=demo`` on MergeAR, whose data node reads codes)."""
    for choice in appended:
        data = _read_file(choice.path)
        for key, value in data.items():
            if not (isinstance(value, Mapping) and "target" in value) or key not in cfg:
                continue
            own = OmegaConf.select(cfg, f"{key}.target", throw_on_missing=False)
            if own is not None and own != value["target"]:
                raise _error(
                    f"override '{choice.text}': {_display(choice.path)} sets {key}.target "
                    f"{value['target']}, but {_origin(origins, f'{key}.target')} sets it to {own}: "
                    f"this config does not take its '{key}' from the '{choice.group}' group; "
                    f"set the {key} keys directly"
                )


def load_with_origins(
    paths: PathLike | Sequence[PathLike], overrides: Sequence[str] = ()
) -> LoadedConfig:
    """Compose ``paths`` (merged in order, each with its ``defaults``), apply ``overrides`` last,
    and return the config with the files read (absolute paths, in composition order) and each leaf
    key's origin.

    Config groups: an override ``GROUP=NAME`` whose GROUP (no dot) is a folder of the configs root
    (``data``, ``trainer`` ...) chooses the file ``GROUP/NAME.yaml`` (or NAME, a path to a .yaml
    file), wherever it stands among the overrides: every ``defaults:`` entry of that group in the
    composition (recursively; not inside the group folder itself) is replaced by it in place. If the
    composition has no such entry, the file is merged after the first config's defaults and before
    its own keys. An unknown NAME is an error listing the group's files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise _error("no config file given: pass at least one YAML file")
    if isinstance(overrides, str):
        overrides = [overrides]
    resolved: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_file():
            raise _error(f"config file not found: {given}")
        resolved.append(path.resolve())
    roots = _group_roots(resolved)
    choices: dict[str, _GroupChoice] = {}
    key_overrides: list[str] = []
    for text in overrides:
        choice = _group_choice(text, roots)
        if choice is None:
            key_overrides.append(text)
        else:
            choices[choice.group] = choice  # the last choice of a group wins
    cfg, files, origins = _compose_all(resolved, choices, roots, appended=())
    unused = [choice for choice in choices.values() if not choice.used]
    if unused:
        _check_appended(cfg, unused, origins)
        cfg, files, origins = _compose_all(resolved, choices, roots, appended=unused)
    for text in key_overrides:
        _apply_override(cfg, text, files=files, origins=origins)
    return LoadedConfig(cfg=cfg, files=tuple(dict.fromkeys(files)), origins=origins)


def _compose_all(
    paths: Sequence[Path],
    choices: Mapping[str, _GroupChoice],
    roots: Sequence[Path],
    *,
    appended: Sequence[_GroupChoice],
) -> tuple[DictConfig, list[str], dict[str, str]]:
    files: list[str] = []
    origins: dict[str, str] = {}
    cfg = OmegaConf.create({})
    for index, path in enumerate(paths):
        composed = _compose(
            path, chain=(), files=files, origins=origins, choices=choices, roots=roots,
            appended=appended if index == 0 else (),
        )
        cfg = _merge(cfg, composed, source=_display(path))
    return cfg, files, origins


def load(paths: PathLike | Sequence[PathLike], overrides: Sequence[str] = ()) -> DictConfig:
    """Like :func:`load_with_origins` but returns only the config."""
    return load_with_origins(paths, overrides).cfg


def from_yaml(text: str, *, source: str = "<string>") -> DictConfig:
    """Parse a saved (already composed) config, e.g. one embedded in a checkpoint."""
    data = _parse_yaml(text, source=source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _error(
            f"{source}: the top level of a config must be a mapping, got {type(data).__name__}"
        )
    return _create(data, source=source)


def from_yaml_with_origins(text: str, *, source: str) -> LoadedConfig:
    """Like :func:`from_yaml`, with every key's origin ``source`` (e.g. ``ckpt:mergevq_config`` or a
    run folder's ``config.yaml``), so that errors name where the config came from."""
    cfg = from_yaml(text, source=source)
    origins: dict[str, str] = {}
    _record(origins, OmegaConf.to_container(cfg, resolve=False), source)  # type: ignore[arg-type]
    return LoadedConfig(cfg=cfg, files=(source,), origins=origins)


def to_yaml(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The config as YAML with every interpolation resolved."""
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise _error(f"key '{key}' cannot be resolved: {exc}") from None


def save(
    cfg: DictConfig | Mapping[str, Any], run_dir: PathLike, *, sources: Sequence[str] = ()
) -> Path:
    """Write the resolved config to ``run_dir/config.yaml`` atomically; creates ``run_dir``.
    ``sources``: the files it was composed from (:attr:`LoadedConfig.files`), written as a
    ``# composed from:`` comment header (YAML readers ignore it)."""
    text = to_yaml(cfg)
    if sources:
        header = "".join(f"#   {source}\n" for source in sources)
        text = f"# composed from:\n{header}{text}"
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    destination = directory / CONFIG_FILENAME
    with atomic_write(destination, text=True) as handle:
        handle.write(text)
    return destination


# --------------------------------------------------------------------------------------------------
# public: instantiation


def _child(
    node: DictConfig | ListConfig, key: Any, path: str, origins: Mapping[str, str] | None
) -> Any:
    """``node[key]`` with interpolations resolved; unresolvable or mandatory (``???``) values are a
    ConfigError naming the key and its file."""
    try:
        return node[key]
    except OmegaConfBaseException as exc:
        where = _origin(origins, path)
        if type(exc).__name__ == "MissingMandatoryValue":
            raise _error(
                f"{where}: key '{path}' is mandatory ('???'); set it, e.g. {path}=VALUE"
            ) from None
        raise _error(f"{where}: key '{path}' cannot be resolved: {exc}") from None


def _as_node(node: Any, path: str) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return node
    if isinstance(node, (Mapping, list, tuple)):
        return _create(node if not isinstance(node, tuple) else list(node), source=path or "<node>")
    return node


def _import_target(target: Any, path: str, origins: Mapping[str, str] | None) -> Any:
    key = _join(path, "target")
    where = _origin(origins, key)
    parts = target.split(".") if isinstance(target, str) else []
    if not parts or any(not p.isidentifier() for p in parts):
        raise _error(
            f"{where}: key '{key}' must be a dotted import path like package.module.Class, "
            f"got {target!r}"
        )
    module = None
    imported = 0
    for count in range(len(parts), 0, -1):
        name = ".".join(parts[:count])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
        imported = count
        break
    if module is None:
        raise _error(
            f"{where}: key '{key}': cannot import target '{target}': no module named '{parts[0]}'"
        )
    obj: Any = module
    for index in range(imported, len(parts)):
        attr = parts[index]
        if not hasattr(obj, attr):
            names = [n for n in dir(obj) if not n.startswith("_")]
            if hasattr(obj, "__path__"):
                names += [m.name for m in pkgutil.iter_modules(obj.__path__)]
            close = _closest(attr, sorted(set(names)))
            hint = (
                f"; did you mean: {', '.join('.'.join([*parts[:index], c]) for c in close)}"
                if close
                else ""
            )
            owner = ".".join(parts[:index])
            raise _error(
                f"{where}: key '{key}': cannot import target '{target}': "
                f"'{owner}' has no attribute '{attr}'{hint}"
            )
        obj = getattr(obj, attr)
    if not callable(obj):
        raise _error(f"{where}: key '{key}': target '{target}' is not a class or function")
    return obj


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _check_keys(
    fn: Any,
    target: str,
    names: Sequence[str],
    supplied: Iterable[str],
    path: str,
    origins: Mapping[str, str] | None,
) -> None:
    signature = _signature(fn)
    if signature is None:
        return
    parameters = signature.parameters.values()
    valid = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        for name in names:
            if name not in valid:
                key = _join(path, f"params.{name}")
                close = _closest(name, valid, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                choices = ", ".join(_ordered_choices(name, valid)) or "none (takes no arguments)"
                raise _error(
                    f"{_origin(origins, key)}: unknown key '{key}' for {target}{hint}; "
                    f"valid keys: {choices}"
                )
    given = set(supplied)
    for p in parameters:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        where = _origin(origins, _join(path, "target"))
        if p.kind is p.POSITIONAL_ONLY:
            raise _error(
                f"{where}: key '{_join(path, 'target')}': {target} has a required positional-only "
                f"argument '{p.name}' that a config cannot set"
            )
        if p.name not in given:
            raise _error(
                f"{where}: key '{path or '<root>'}' ({target}) is missing required argument "
                f"'{p.name}'; set {_join(path, 'params.' + p.name)}"
            )


# --------------------------------------------------------------------------------------------------
# trust: what a config may build


def _refuse_unless_allowed(
    target: Any, path: str, origins: Mapping[str, str] | None, allowed: AbstractSet[str]
) -> None:
    """``target`` (the value of key ``path``) must be one of ``allowed``; checked before any import."""
    if isinstance(target, str) and target in allowed:
        return
    raise _error(
        f"{_origin(origins, path)}: key '{path}': refused to build {target!r}: a config read from a "
        f"checkpoint, run folder or export folder may only name mergevq's own builders "
        f"(the {len(allowed)} listed in mergevq/trust.py)"
    )


def _check_allowed(
    value: Any, path: str, origins: Mapping[str, str] | None, allowed: AbstractSet[str]
) -> None:
    """Every ``target`` anywhere in ``value`` is in ``allowed`` (nothing is imported)."""
    if isinstance(value, DictConfig):
        if "target" in value.keys():
            key = _join(path, "target")
            _refuse_unless_allowed(_child(value, "target", key, origins), key, origins, allowed)
        for name in value.keys():
            child_path = _join(path, name)
            _check_allowed(_child(value, name, child_path, origins), child_path, origins, allowed)
    elif isinstance(value, ListConfig):
        for index in range(len(value)):
            child_path = _join(path, index)
            _check_allowed(_child(value, index, child_path, origins), child_path, origins, allowed)


# --------------------------------------------------------------------------------------------------
# argument types: each value against its parameter's annotation

_NONE_TYPE = type(None)
_LIST_LIKE = (
    list, tuple, set, frozenset, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection,
    abc.Set, abc.MutableSet,
)
_MAPPING_LIKE = (dict, abc.Mapping, abc.MutableMapping)

# (key path of the offending value, the value, what was expected); None: the value fits
_Mismatch = Union[tuple[str, Any, str], None]


def _type_hints(fn: Any) -> dict[str, Any]:
    """The resolved annotations of ``fn``'s parameters (a class: of its ``__init__``). Modules use
    ``from __future__ import annotations``, so they are strings; one that cannot be resolved is left
    out (that parameter is not checked) rather than hiding the others."""
    function = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return dict(typing.get_type_hints(function))
    except Exception:  # noqa: BLE001 - NameError / TypeError of one annotation: resolve one by one
        pass
    annotations = getattr(function, "__annotations__", None)
    if not isinstance(annotations, Mapping):
        return {}
    namespace = getattr(inspect.unwrap(function), "__globals__", {})
    hints: dict[str, Any] = {}
    for name, annotation in annotations.items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        with contextlib.suppress(Exception):
            hints[name] = typing.get_type_hints(holder, globalns=namespace)[name]
    return hints


def _is_object_node(value: Any) -> bool:
    return isinstance(value, DictConfig) and "target" in value.keys()


def _entries(value: Any, path: str, origins: Mapping[str, str] | None) -> list[tuple[Any, Any]]:
    """(key, resolved value) of a list or mapping, OmegaConf or plain."""
    if isinstance(value, (DictConfig, ListConfig)):
        keys = range(len(value)) if isinstance(value, ListConfig) else list(value.keys())
        return [(k, _child(value, k, _join(path, k), origins)) for k in keys]
    if isinstance(value, Mapping):
        return list(value.items())
    return list(enumerate(value))


def _is_path_hint(hint: Any) -> bool:
    base = typing.get_origin(hint) or hint
    return base is os.PathLike or (isinstance(base, type) and issubclass(base, PurePath))


def _describe(hint: Any) -> str:
    """What ``hint`` asks for, in the words of a config file."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return "anything"
    if hint is None or hint is _NONE_TYPE:
        return "null"
    if origin is typing.Annotated:
        return _describe(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint in (bool, int, float, str):
        return hint.__name__
    if _is_path_hint(hint):
        return "a path (str)"
    base = origin or hint
    if base in _MAPPING_LIKE:
        if len(args) == 2 and args[1] not in (Any, object):
            return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
        return "a mapping"
    if base in _LIST_LIKE:
        if base is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0])}" if args and args[0] not in (Any, object) else "a list"
    return getattr(hint, "__name__", str(hint))


def _union_mismatch(value: Any, members: Sequence[Any], path: str, hint: Any,
                    origins: Mapping[str, str] | None) -> _Mismatch:
    found = []
    for member in members:
        mismatch = _mismatch(value, member, path, origins)
        if mismatch is None:
            return None
        found.append(mismatch)
    # one member has the value's shape and fails inside it (an element): point at that element
    deeper = [m for m in found if m[0] != path]
    if len(deeper) == 1:
        return deeper[0]
    return path, value, _describe(hint)


def _sequence_mismatch(value: Any, base: Any, args: tuple[Any, ...], path: str, hint: Any,
                       origins: Mapping[str, str] | None) -> _Mismatch:
    # a YAML list stands for any sequence (tuples included); a string is not a list of anything here
    if not isinstance(value, (ListConfig, list, tuple)):
        return path, value, _describe(hint)
    entries = _entries(value, path, origins)
    if base is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(entries) != len(args):
            return path, value, _describe(hint)
        element_hints = list(args)
    else:
        element_hints = [args[0] if args else Any] * len(entries)
    for (index, item), element in zip(entries, element_hints):
        mismatch = _mismatch(item, element, _join(path, index), origins)
        if mismatch is not None:
            return mismatch
    return None


def _mapping_mismatch(value: Any, args: tuple[Any, ...], path: str, hint: Any,
                      origins: Mapping[str, str] | None) -> _Mismatch:
    if not isinstance(value, (DictConfig, Mapping)):
        return path, value, _describe(hint)
    key_hint, value_hint = args if len(args) == 2 else (Any, Any)
    for key, item in _entries(value, path, origins):
        if _mismatch(key, key_hint, path, origins) is not None:
            return path, value, _describe(hint)
        mismatch = _mismatch(item, value_hint, _join(path, key), origins)
        if mismatch is not None:
            return mismatch
    return None


def _mismatch(value: Any, hint: Any, path: str, origins: Mapping[str, str] | None) -> _Mismatch:
    """None when ``value`` (at key ``path``) fits the annotation ``hint``; else where and why not.
    What cannot be judged from a config value (an object node, a class such as ``nn.Module``, a
    ``Callable``, a ``TypeVar``) fits."""
    if _is_object_node(value) or hint is Any or hint is object:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _mismatch(value, args[0], path, origins)
    if hint is None or hint is _NONE_TYPE:
        return None if value is None else (path, value, "null")
    if origin in (Union, types.UnionType):
        return _union_mismatch(value, args, path, hint, origins)
    if origin is typing.Literal:
        fits = any(value == a and type(value) is type(a) for a in args)
        return None if fits else (path, value, _describe(hint))
    if hint is bool:
        fits = isinstance(value, bool)
    elif hint is int:
        fits = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:  # an int is a float (lr: 1 means 1.0)
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        fits = isinstance(value, str)
    elif _is_path_hint(hint):
        fits = isinstance(value, (str, os.PathLike))
    elif (origin or hint) in _MAPPING_LIKE:
        return _mapping_mismatch(value, args, path, hint, origins)
    elif (origin or hint) in _LIST_LIKE:
        return _sequence_mismatch(value, origin or hint, args, path, hint, origins)
    else:
        fits = True
    return None if fits else (path, value, _describe(hint))


def _shown(value: Any) -> str:
    """A value as a message shows it: ``'eight' (str)``, ``0.9 (float)``, ``[0.5, 'x'] (list)``."""
    if value is None:
        return "null"
    plain = value
    if isinstance(value, (DictConfig, ListConfig)):
        with contextlib.suppress(OmegaConfBaseException):
            plain = OmegaConf.to_container(value, resolve=True)
    if isinstance(plain, (DictConfig, Mapping)):
        kind = "mapping"
    elif isinstance(plain, (ListConfig, list, tuple)):
        kind = "list"
    else:
        kind = type(plain).__name__
    text = repr(plain)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({kind})"


def _check_value_type(
    value: Any, hint: Any, key: str, origins: Mapping[str, str] | None
) -> None:
    mismatch = _mismatch(value, hint, key, origins)
    if mismatch is not None:
        path, culprit, expected = mismatch
        raise _error(
            f"{_origin(origins, path)}: key '{path}': expected {expected}, got {_shown(culprit)}"
        )


def check_types(
    fn: Any,
    values: Mapping[str, Any],
    *,
    key: str = "",
    origins: Mapping[str, str] | None = None,
) -> None:
    """Check every entry of ``values`` against the annotation of ``fn``'s parameter of that name (a
    class: its ``__init__``, so a dataclass's fields). ``key``: where ``values`` sits in the config
    (``"trainer"``, ``"model.params"``), for messages. Supported: int (not bool), float (int too),
    bool, str, None, unions, Literal, paths (str), lists / tuples / sequences (a YAML list) and
    mappings of those, Any; what cannot be judged (object nodes, other classes) is accepted. A
    mismatch is a one-line :class:`ConfigError` naming the file, the full key path (down to a list
    element), the value and the expected type."""
    hints = _type_hints(fn)
    hints.pop("return", None)  # the result's annotation, not a parameter's
    for name, value in _entries(values, key, origins):
        if name in hints:
            _check_value_type(value, hints[name], _join(key, name), origins)


def _node_parts(
    node: Any, path: str, origins: Mapping[str, str] | None
) -> tuple[str, DictConfig | None]:
    """Check the shape of an object node; return its target string and params (or None)."""
    shown = path or "<root>"
    if not isinstance(node, DictConfig) or "target" not in node.keys():
        got = "a mapping without 'target'" if isinstance(node, DictConfig) else type(node).__name__
        raise _error(
            f"{_origin(origins, path)}: key '{shown}' must be an object node "
            f"{{target: dotted.path, params: {{...}}}}, got {got}"
        )
    extra_keys = [str(k) for k in node.keys() if k not in _NODE_KEYS]
    if extra_keys:
        key = _join(path, extra_keys[0])
        raise _error(
            f"{_origin(origins, key)}: key '{key}' is not allowed in an object node; "
            f"valid keys: {', '.join(_NODE_KEYS)} (constructor arguments go under params)"
        )
    target = _child(node, "target", _join(path, "target"), origins)
    params = (
        _child(node, "params", _join(path, "params"), origins) if "params" in node.keys() else None
    )
    if params is not None and not isinstance(params, DictConfig):
        key = _join(path, "params")
        raise _error(
            f"{_origin(origins, key)}: key '{key}' must be a mapping of constructor arguments, "
            f"got {type(params).__name__}"
        )
    return target, params


def _validate_node(
    node: Any, path: str, origins: Mapping[str, str] | None, extra: Iterable[str] = ()
) -> None:
    target, params = _node_parts(node, path, origins)
    fn = _import_target(target, path, origins)
    names = [str(k) for k in params.keys()] if params is not None else []
    for name in extra:
        if name in names:
            key = _join(path, f"params.{name}")
            raise _error(
                f"{_origin(origins, key)}: key '{key}' is supplied by the program "
                f"and must not be set in the config"
            )
    _check_keys(fn, target, names, [*names, *extra], path, origins)
    if params is not None:
        check_types(fn, params, key=_join(path, "params"), origins=origins)
        for key in params.keys():
            child_path = _join(path, f"params.{key}")
            _validate_value(_child(params, key, child_path, origins), child_path, origins)


def _validate_value(value: Any, path: str, origins: Mapping[str, str] | None) -> None:
    if isinstance(value, DictConfig):
        if "target" in value.keys():
            _validate_node(value, path, origins)
        else:
            for key in value.keys():
                child_path = _join(path, key)
                _validate_value(_child(value, key, child_path, origins), child_path, origins)
    elif isinstance(value, ListConfig):
        for index in range(len(value)):
            child_path = _join(path, index)
            _validate_value(_child(value, index, child_path, origins), child_path, origins)


def _build_node(
    node: DictConfig, path: str, origins: Mapping[str, str] | None, extra: Mapping[str, Any]
) -> Any:
    target, params = _node_parts(node, path, origins)
    fn = _import_target(target, path, origins)
    kwargs: dict[str, Any] = {}
    if params is not None:
        for key in params.keys():
            child_path = _join(path, f"params.{key}")
            kwargs[str(key)] = _build_value(
                _child(params, key, child_path, origins), child_path, origins
            )
    kwargs.update(extra)
    try:
        return fn(**kwargs)
    except (ConfigError, ValueError) as exc:
        # A constructor refusing one of its arguments: say which file and node, in one line.
        message = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, ConfigError) and _names_a_file(message, origins):
            raise
        where = _origin(origins, _join(path, "target"))
        raise _error(f"{where}: key '{path or '<root>'}' ({target}): {message}") from exc


def _names_a_file(message: str, origins: Mapping[str, str] | None) -> bool:
    """Whether ``message`` already starts with one of the config's files (a nested config error)."""
    sources = {s for s in (origins or {}).values() if s != COMMAND_LINE}
    return any(message.startswith(f"{source}:") for source in sources)


def _build_value(value: Any, path: str, origins: Mapping[str, str] | None) -> Any:
    if isinstance(value, DictConfig):
        if "target" in value.keys():
            return _build_node(value, path, origins, {})
        return {
            key: _build_value(
                _child(value, key, _join(path, key), origins), _join(path, key), origins
            )
            for key in value.keys()
        }
    if isinstance(value, ListConfig):
        return [
            _build_value(_child(value, i, _join(path, i), origins), _join(path, i), origins)
            for i in range(len(value))
        ]
    return value


def validate(
    node: Any,
    *,
    key: str = "",
    origins: Mapping[str, str] | None = None,
    extra: Iterable[str] = (),
    allowed: AbstractSet[str] | None = None,
) -> None:
    """Check an object node and every node nested in its params without building anything: node
    shape, targets import, keys match constructor signatures, values match the parameters' type
    annotations, required arguments are present (``extra``: argument names the program will supply
    itself). ``allowed``: see :func:`instantiate`."""
    node = _as_node(node, key)
    if allowed is not None:
        _check_allowed(node, key, origins, allowed)
    _validate_node(node, key, origins, extra)


def instantiate(
    node: Any,
    *,
    key: str = "",
    origins: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    allowed: AbstractSet[str] | None = None,
) -> Any:
    """Build the object described by ``node`` (``{target, params}``).

    ``key``: the node's dotted path in the full config (``"model"``), used in messages.
    ``origins``: key path -> file, from :func:`load_with_origins`, so messages name the file.
    ``extra``: objects only the program has (e.g. a built tokenizer), passed to the top-level target
    alongside its params; setting one of them in the config is an error.

    ``allowed``: None (any target: the config came from the user) or the exact dotted names the
    config may build (one read from a checkpoint, run or export folder: ``mergevq.trust``); every
    target of the tree is checked before anything is imported.

    The whole tree is validated before any constructor runs. A ``ConfigError`` or ``ValueError`` a
    constructor raises becomes a one-line ``ConfigError`` prefixed with the node's file and key path
    (unless it already names a file); any other exception propagates unchanged.
    """
    extra = dict(extra or {})
    node = _as_node(node, key)
    if allowed is not None:
        _check_allowed(node, key, origins, allowed)
    _validate_node(node, key, origins, extra.keys())
    return _build_node(node, key, origins, extra)


def section_values(cls: type, loaded: LoadedConfig, section: str) -> dict[str, Any]:
    """The resolved ``section`` of ``loaded`` as a dict holding exactly the fields of the dataclass
    ``cls``, each checked against its annotation; a missing or unknown key, or a wrong type, is one line
    naming the file that set it."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls)]
    node = OmegaConf.to_container(loaded.select(section), resolve=True)
    if not isinstance(node, Mapping):
        raise ConfigError(f"{loaded.origin(section)}: '{section}' must be a mapping of the keys {', '.join(names)}")
    unknown = sorted(set(node) - set(names))
    missing = [n for n in names if n not in node]
    if unknown or missing:
        problem = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing key(s) {', '.join(missing)}"
        raise ConfigError(f"{loaded.origin(section)}: {section} has {problem}; valid keys: {', '.join(names)}")
    check_types(cls, node, key=section, origins=loaded.origins)
    return dict(node)
