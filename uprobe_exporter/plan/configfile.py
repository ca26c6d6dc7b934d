"""The configuration file: read it (or the built-in example), decode it, hand the TOML to ``config.py``."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from uprobe_exporter.errors import ConfigError, os_errors
from uprobe_exporter.plan.config import Config, parse_config_partial


def example_text() -> str:
    """The built-in example configuration (also shipped as ``config.example.toml``)."""
    return resources.files("uprobe_exporter").joinpath("example.toml").read_text(encoding="utf-8")


def _decode(data: bytes, source: str) -> str:
    """TOML is UTF-8 (toml.io: "A TOML file must be a valid UTF-8 encoded Unicode document")."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{source}: not UTF-8 (byte {data[exc.start]:#04x} at line {line}, offset {exc.start}); "
                           "save the configuration as UTF-8"]) from exc


def load_config_partial(path: str | None) -> tuple[Config, list[str]]:
    """Read a TOML file (or the built-in example when ``path`` is None): the valid part and the problems.
    A file that cannot be read or is not TOML raises ConfigError at once."""
    if path is None:
        text, source = example_text(), "<built-in example>"
    else:
        with os_errors(ConfigError, f"{path}: cannot read configuration", path=path):
            raw = Path(path).read_bytes()
        text, source = _decode(raw, path), path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc
    return parse_config_partial(data, source)


