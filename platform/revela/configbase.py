"""Strict pydantic base and YAML loading shared by every config in the platform."""

from __future__ import annotations

from pathlib import Path
import re
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys and wrong types are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_safe_name(name: str) -> str:
    """A run, sweep or trial name becomes a folder under the storage path: it must be one plain path component."""
    if not _SAFE_NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"{name!r} is not a safe name: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (no '/', no '..')")
    return name


SafeName = Annotated[str, AfterValidator(check_safe_name)]
"""Use for every config field that names a folder (runs, sweeps, trials)."""


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the file and the key."""


def field_problems(err: ValidationError, unknown: str = "unknown key") -> list[tuple[str, str]]:
    """(dotted field, message) for each error of `err`, with the value it got; field "" for the model as a whole.
    Config files, `revela prepare`'s flags and evaluation settings all report bad input this way."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append((key, unknown))
            continue
        msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
        # a whole section's validator names what is wrong itself; echoing the section would bury it
        got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        problems.append((key, msg + got))
    return problems


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    lines += [f"  {key or '<root>'}: {message}" for key, message in field_problems(err)]
    return "\n".join(lines)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping names the same key twice; plain YAML loaders silently keep the last value."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (`train:` twice would drop the first)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first:
                        raise DuplicateKeyError(None, None, f"duplicate key {key!r} (first at line {first[key]})",
                                                key_node.start_mark)
                    first[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
        return super().construct_mapping(node, deep=deep)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (["train", "lr"], 0.0003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: not a valid YAML value: {_yaml_problem(e)}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except DuplicateKeyError as e:
        raise ConfigError(f"{path}:{e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def validate(cls: type[T], data: dict, source: str = "<dict>") -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None


def deep_merge(base: dict, update: dict) -> dict:
    """`update` over `base`, section by section (a partial section keeps the other defaults of that section)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build `cls` from its embedded defaults, then an optional YAML file, then `key.path=value` overrides."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return validate(cls, deep_merge(cls().model_dump(), data), str(path) if path else "<defaults>")
