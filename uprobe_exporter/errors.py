"""The exception tree of uprobe_exporter.

    UprobeExporterError                 every failure we expect and explain (exit 1 unless noted)
    ├── ConfigError                     bad configuration or usage: a list of located problems (exit 2)
    ├── ResolveError                    a binary, library or symbol cannot be turned into a file offset (exit 2)
    ├── NoMatchError                    a search found nothing: ``symbols BINARY PATTERN`` (exit 1, like grep)
    ├── TracefsError                    tracefs missing, not mounted, not writable, an I/O failure
    │   └── KernelRefusedError          the kernel refused a command; carries the command and error_log
    │       └── ProbeRefusedError       ... a probe or filter from the configuration (a config problem, exit 2)
    ├── OwnershipError                  our group or instance is held by a running exporter, or is not ours
    ├── OutputClosed                    the reader of our stdout went away: stop cleanly (exit 0)
    ├── OutputError                     the JSON output cannot be written (disk full, I/O error)
    ├── MetricsError                    the metrics endpoint cannot listen (port taken)
    └── TraceParseError                 one trace line or page could not be parsed (counted, never fatal)

Lower-level errors (``OSError``, ``ELFError``) are converted at exactly one boundary each:
``tracefs.py`` for the kernel and ``elf.py`` for binaries. The CLI turns any of these into one line
on stderr and an exit code; nothing else catches them.

A message echoes what it was given (a path, a key, a value from the configuration): every control or
other unprintable character in it is escaped like ``repr`` does (``\\n``, ``\\x1b``, ``\\u2028``), here,
so that one problem stays one line (a configuration value with a newline cannot forge a second line).
"""

from __future__ import annotations

import errno as errno_codes
from collections.abc import Sequence


def one_line(text: str) -> str:
    """``text`` with every unprintable character escaped as ``repr`` would: ``'a\\nb'``, ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(c) or repr(c)[1:-1] for c in text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class UprobeExporterError(Exception):
    """Root of every error uprobe_exporter raises on purpose; its message is one line."""

    exit_code = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(message))


class ConfigError(UprobeExporterError):
    """One or more configuration problems, each with its dotted location (``probes[2].function``)."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(one_line(p) for p in problems)
        super().__init__("; ".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} configuration problems:\n  " + "\n  ".join(self.problems)


class ResolveError(UprobeExporterError):
    """A binary, library or symbol could not be resolved to a probeable file offset (bad input: exit 2)."""

    exit_code = 2

    def __init__(self, message: str, *, binary: str = "", symbol: str = "") -> None:
        self.binary = binary
        self.symbol = symbol
        super().__init__(message)


class NoMatchError(UprobeExporterError):
    """``symbols`` found no function matching the pattern (exit 1, like grep); the message suggests close names."""


class TracefsError(UprobeExporterError):
    """tracefs is absent, unmountable or unwritable, or a tracefs file could not be read or written."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(message)


class KernelRefusedError(TracefsError):
    """The kernel refused a command; ``error_log`` holds its own explanation with the caret line."""

    def __init__(self, message: str, *, path: str, command: str, error_log: str = "", errno: int = 0) -> None:
        self.command = command
        self.error_log = error_log
        self.errno = errno
        super().__init__(message, path=path)

    def __str__(self) -> str:
        text = f"{self.args[0]}: {self.command!r}"
        if self.error_log:
            text += "\n" + self.error_log.rstrip("\n")
        return text


class ProbeRefusedError(KernelRefusedError):
    """The kernel refused a probe or filter we built from ``location`` of the configuration: a
    configuration problem (exit 2), unless the kernel said it was out of memory or busy (exit 1)."""

    def __init__(self, location: str, refused: KernelRefusedError) -> None:
        super().__init__(f"{location}: {refused.args[0]}", path=refused.path, command=refused.command,
                         error_log=refused.error_log, errno=refused.errno)
        self.location = location
        self.exit_code = 1 if self.errno in (errno_codes.ENOMEM, errno_codes.EBUSY, errno_codes.EAGAIN) else 2


class OwnershipError(UprobeExporterError):
    """Our group or instance is held by another running exporter (``pid``, 0 when it runs in a pid
    namespace we cannot see), or exists and is not ours."""

    def __init__(self, message: str, *, path: str = "", pid: int | None = None) -> None:
        self.path = path
        self.pid = pid
        super().__init__(message)


class OutputClosed(UprobeExporterError):
    """The JSON output pipe was closed by its reader (``uprobe-exporter run | head``)."""

    exit_code = 0


class OutputError(UprobeExporterError):
    """The JSON output could not be written."""


class MetricsError(UprobeExporterError):
    """The metrics endpoint could not be served."""


class TraceParseError(UprobeExporterError):
    """A trace line or page that does not parse; ``reason`` is a short label used as a metric label."""

    def __init__(self, reason: str, raw: str = "") -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(f"{reason}: {raw!r}")
