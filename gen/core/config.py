"""Typed dataclass configs: defaults, then a YAML file, then `--key value` flags.

Every script's `main()` reads exactly one config through `parse_config`. The dataclass is the
single source of defaults; a YAML file (`--config FILE`) overrides them, and command-line flags
override the file. Nested dataclasses are addressed with dotted keys (`--model.channels 64`)
or nested YAML mappings. Unknown keys are errors that list the valid ones, ranges and choices
are checked up front, and `--dry-run` prints the resolved config and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key a user can fix: the message says which and how."""


class SetupError(RuntimeError):
    """What a stage needs cannot be had here (weights, an optional package): the message says how to get it."""


def field(
    default: Any = dataclasses.MISSING,
    *,
    help: str = "",
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    finite: bool = True,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    was: Sequence[str] = (),
) -> Any:
    """A dataclass field with help text and checked choices/range; float fields refuse nan/inf unless `finite=False`.

    `was`: the key's former names, still accepted (file and flag) with a one-line deprecation warning."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min, "max": max,
            "finite": finite, "was": tuple(was)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------
# Introspection


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _flat_fields(cls: type, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Map dotted key -> (type, field) for every leaf field of a (nested) dataclass."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(tp):
            out.update(_flat_fields(tp, key + "."))
        else:
            out[key] = (tp, f)
    return out


def _renamed(cls: type) -> dict[str, str]:
    """Former dotted key -> its current one, from the `was` of every leaf field."""
    out = {}
    for key, (_, f) in _flat_fields(cls).items():
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        out.update({parent + old: key for old in f.metadata.get("was", ())})
    return out


def current_keys(cls: type, overrides: dict[str, Any], where: str = "", warn: bool = False) -> dict[str, Any]:
    """`overrides` with every former key name replaced by its current one (a one-line warning each when `warn`)."""
    renamed = _renamed(cls)
    out = {}
    for key, value in overrides.items():
        if key in renamed:
            if warn:
                print(f"warning: config key '{key}' is now '{renamed[key]}' ({where}); the old name will go",
                      file=sys.stderr)
            key = renamed[key]
        out[key] = value
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + "?" if len(args) == 1 else "|".join(map(_type_name, args))
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0]) if args else 'str'}]"
    if origin is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot parse {value!r}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        args = typing.get_args(tp)
        inner = args[0] if args else str
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            items = [value]
        coerced = [_coerce(v, inner, key) for v in items]
        return tuple(coerced) if origin is tuple or tp is tuple else coerced
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise ConfigError(f"{key}: cannot parse {value!r} as a mapping ({e})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(str(value).replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(value)
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def _unknown_key_error(key: str, keys: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}.{hint} Valid keys: {', '.join(keys)}")


def _unknown_arg_error(token: str, keys: list[str]) -> ConfigError:
    """The error for the first command-line token argparse did not take: a missing dash, a stray word, or a bad key."""
    name = token.split("=", 1)[0]
    bare = name.lstrip("-").replace("-", "_")
    if name.startswith("-") and not name.startswith("--"):
        close = [bare] if bare in keys else difflib.get_close_matches(bare, keys, n=1)
        hint = f" did you mean '--{close[0]}'?" if close else " config keys take two dashes (--key value)"
        return ConfigError(f"unknown option '{name}':{hint}")
    if not name.startswith("-"):
        return ConfigError(f"unexpected argument '{token}': config keys are given as --key value")
    return _unknown_key_error(bare, keys, "the command line")


def _flatten_mapping(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_mapping(v, key + "."))
            out[key] = v  # also offered whole, for dict-typed fields
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# Building and checking


def _set(obj: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    setattr(obj, parts[-1], value)


def _get(obj: Any, dotted: str) -> Any:
    for p in dotted.split("."):
        obj = getattr(obj, p)
    return obj


def apply_overrides(cfg: T, overrides: dict[str, Any], where: str, warn: bool = True) -> T:
    """Set dotted keys on a config instance (in place), coercing and rejecting unknown keys.

    A former key name (a field's `was`) sets the current one, with a warning when `warn`; a key the
    config class lists in its `RETIRED` (dotted key -> function of the value giving what to write
    instead) is refused with that advice."""
    overrides = current_keys(type(cfg), overrides, where, warn)
    retired = getattr(type(cfg), "RETIRED", {})
    flat = _flat_fields(type(cfg))
    keys = list(flat)
    nested_prefixes = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    dict_fields = {k for k, (tp, _) in flat.items() if tp is dict or typing.get_origin(tp) is dict}
    for key, raw in overrides.items():
        if key in nested_prefixes and isinstance(raw, dict):
            continue  # its leaves arrive separately via _flatten_mapping
        if any(key.startswith(d + ".") for d in dict_fields):
            continue  # a leaf inside a dict-typed field: the field arrives whole
        if key in retired:
            raise ConfigError(f"{key} is gone ({where}): {retired[key](raw)}")
        if key not in flat:
            raise _unknown_key_error(key, keys, where)
        tp, _ = flat[key]
        _set(cfg, key, _coerce(raw, tp, key))
    return cfg


def check(cfg: Any) -> None:
    """Check choices and ranges of every field, then the dataclass's own `validate()` if any."""
    for key, (_, f) in _flat_fields(type(cfg)).items():
        value = _get(cfg, key)
        meta = f.metadata
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            # nan compares false with every bound, so a range check alone lets it through
            if isinstance(v, float) and meta.get("finite", True) and not math.isfinite(v):
                raise ConfigError(f"{key}: {v!r} is not a finite number (nan and inf are refused)")
            if meta.get("choices") and v not in meta["choices"]:
                raise ConfigError(f"{key}: {v!r} is not one of {', '.join(map(str, meta['choices']))}")
            if meta.get("min") is not None and v < meta["min"]:
                raise ConfigError(f"{key}: {v!r} is below the minimum {meta['min']}")
            if meta.get("max") is not None and v > meta["max"]:
                raise ConfigError(f"{key}: {v!r} is above the maximum {meta['max']}")
    if hasattr(cfg, "validate"):
        cfg.validate()


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a mapping, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data


def apply_file(cfg: T, path: str | Path) -> T:
    """Set the keys of a YAML config file on a config instance (in place): a preset under later keys."""
    return apply_overrides(cfg, _flatten_mapping(load_yaml(path)), str(path))


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (paths as strings), for config.json."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cls: type[T], data: dict, where: str = "a saved config") -> T:
    """Rebuild a config from `to_dict` output (unknown keys are errors)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    cfg = cls()
    apply_overrides(cfg, _flatten_mapping(data), where, warn=False)  # a saved config: no warnings about old names
    check(cfg)
    return cfg


def _resolve(cfg: Any, given: dict[str, Any]) -> None:
    """Let a config with `resolve(given)` layer files (presets) under the keys given explicitly."""
    if hasattr(cfg, "resolve"):
        cfg.resolve(current_keys(type(cfg), given))


def build(cls: type[T], file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults -> YAML file -> overrides, checked. The programmatic twin of `parse_config`."""
    cfg = cls()
    from_file = _flatten_mapping(load_yaml(file)) if file is not None else {}
    apply_overrides(cfg, from_file, str(file))
    apply_overrides(cfg, overrides or {}, "the overrides")
    _resolve(cfg, {**from_file, **(overrides or {})})
    check(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Command line


def _help_table(cls: type, cfg: Any) -> str:
    lines = ["config keys (defaults -> --config FILE -> --key value):"]
    for key, (tp, f) in _flat_fields(cls).items():
        default = _get(cfg, key)
        extra = ""
        if f.metadata.get("choices"):
            extra = f" {{{','.join(map(str, f.metadata['choices']))}}}"
        lines.append(f"  --{key} {_type_name(tp)}{extra} (default: {default!r})")
        if f.metadata.get("help"):
            lines.append(f"        {f.metadata['help']}")
    return "\n".join(lines)


_NEGATIVE = re.compile(r"^-(\d|\.\d|inf|infinity|nan)", re.IGNORECASE)


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--key -inf` -> `--key=-inf`: argparse would take a value starting with a dash for an option."""
    out: list[str] = []
    for tok in argv:
        if out and _NEGATIVE.match(tok) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    description: str = "",
    epilog: str = "",
    positional: Sequence[str] = (),
) -> T:
    """Parse `[--config FILE] [--dry-run] [--key value ...]` into a checked config.

    `positional` names config keys that may also be given as leading positional arguments
    (e.g. `prepare.py phantom` sets `command`). Exits with status 2 and a clear message on a
    bad key or value; prints the resolved config and exits 0 on `--dry-run`.
    """
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    defaults = cls()
    flat = _flat_fields(cls)
    parser = argparse.ArgumentParser(
        description=description,
        epilog=(epilog + "\n\n" if epilog else "") + _help_table(cls, defaults),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=True,
        allow_abbrev=False,  # a typo like --subset must not silently mean --subsets
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of config keys")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    for name in positional:
        parser.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=flat[name][1].metadata.get("help", ""))
    for key, (tp, _) in flat.items():
        if key in positional:
            continue
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        if tp is bool:
            kwargs.update(nargs="?", const="true")
        flags = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])
        parser.add_argument(*flags, **kwargs)
    for key in [*_renamed(cls), *getattr(cls, "RETIRED", {})]:  # applied (or refused with advice) as config keys
        parser.add_argument(f"--{key}", dest=key, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ns, unknown = parser.parse_known_args(argv)
    try:
        if unknown:
            raise _unknown_arg_error(unknown[0], list(flat))
        cfg = cls()
        from_file = _flatten_mapping(load_yaml(ns.config)) if ns.config else {}
        apply_overrides(cfg, from_file, ns.config)
        given = {k: v for k, v in vars(ns).items() if k not in ("config", "dry_run")}
        apply_overrides(cfg, given, "the command line")
        _resolve(cfg, {**from_file, **given})
        check(cfg)
    except ConfigError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if ns.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
        sys.exit(0)
    return cfg
