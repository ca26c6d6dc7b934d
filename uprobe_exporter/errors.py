"""The exception tree of uprobe_exporter, and the one helper that maps ``OSError`` into it.

    UprobeExporterError                 every failure we expect and explain (exit 1 unless noted)
    ├── ConfigError                     bad configuration or usage: a list of located problems (exit 2)
    ├── ResolveError                    a binary, library or symbol cannot be turned into a file offset (exit 2)
    ├── NoMatchError                    a search found nothing: ``symbols BINARY PATTERN`` (exit 1, like grep)
    ├── TracefsError                    tracefs missing, not mounted, not writable, an I/O failure
    │   ├── KernelRefusedError          the kernel refused a command; carries the command and error_log
    │   │   └── ProbeRefusedError       ... a probe or filter from the configuration (a config problem, exit 2)
    │   └── FormatError                 an event's format (or header_page) we cannot decode: start-up (exit 2)
    ├── OwnershipError                  our group or instance is held by a running exporter, or is not ours
    ├── OutputClosed                    the reader of our stdout went away: stop cleanly (exit 0)
    ├── MetricsError                    the metrics endpoint cannot listen (port taken)
    └── TraceParseError                 one trace line or uprobe_profile line could not be parsed: raised
                                        only inside a parser, caught and counted by its caller, never fatal

``OSError`` becomes one of these in exactly one way: ``os_errors`` (a context manager around the I/O call)
or ``mapped_oserror`` (in an ``except`` clause that must do more), whose message keeps what the user
needs: what we tried, the path, the errno's text, and the fix where we know it
(``cannot read /etc/ue.toml: Permission denied``). An ``OSError`` that is control flow, not a failure,
is caught where it happens, named by a predicate below (``is_gone``: the file, process or event went
away; ``is_busy``: retry) or by its class (``BlockingIOError``: nothing to read yet, ``FileNotFoundError``),
or with a comment saying why (``# a lookup: ...`` in /proc, a search path); a fault at run time that is
counted and retried (the JSON output's disk full) says so where it is caught. ``ELFError`` is converted
in ``plan/elf.py`` alone. The CLI (``cli.py``) turns any of these into one line on stderr and an exit
code; nothing else catches them all.

A message echoes what it was given (a path, a key, a value from the configuration): every control or
other unprintable character in it is escaped like ``repr`` does (``\\n``, ``\\x1b``, ``\\u2028``), here,
so that one problem stays one line (a configuration value with a newline cannot forge a second line).
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
from collections.abc import Iterator, Mapping, Sequence
from typing import Self, TypeVar


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

    @classmethod
    def with_path(cls, message: str, path: str) -> Self:
        """This error for ``message`` about ``path``, the path kept in the attribute this class has for
        it (``path``, ``binary``), if any: how ``mapped_oserror`` builds every class alike."""
        return cls(message)


class ConfigError(UprobeExporterError):
    """One or more configuration problems, each with its dotted location (``probes[2].function``)."""

    exit_code = 2

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(one_line(p) for p in problems)
        super().__init__("; ".join(self.problems))

    @classmethod
    def with_path(cls, message: str, path: str) -> Self:
        return cls([message])

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

    @classmethod
    def with_path(cls, message: str, path: str) -> Self:
        return cls(message, binary=path)


class NoMatchError(UprobeExporterError):
    """``symbols`` found no function matching the pattern (exit 1, like grep); the message suggests close names."""


class TracefsError(UprobeExporterError):
    """tracefs is absent, unmountable or unwritable, or a tracefs file could not be read or written."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        super().__init__(message)

    @classmethod
    def with_path(cls, message: str, path: str) -> Self:
        return cls(message, path=path)


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


class FormatError(TracefsError):
    """The ``format`` of ``event`` (or the ring buffer's ``header_page``) has a ``field`` the reader
    cannot decode: found at start-up, before any record is read, and a configuration problem (exit 2):
    the message says which argument type to change, or to switch ``[exporter] reader``."""

    exit_code = 2

    def __init__(self, message: str, *, event: str, field: str = "", path: str = "") -> None:
        self.event = event
        self.field = field
        super().__init__(message, path=path)


RAW_READER_FIX = 'set [exporter] reader = "text" in the configuration (the text reader decodes it)'


class OwnershipError(UprobeExporterError):
    """Our group or instance is held by another running exporter (``pid``, 0 when it runs in a pid
    namespace we cannot see), or exists and is not ours."""

    def __init__(self, message: str, *, path: str = "", pid: int | None = None) -> None:
        self.path = path
        self.pid = pid
        super().__init__(message)

    @classmethod
    def with_path(cls, message: str, path: str) -> Self:
        return cls(message, path=path)


class OutputClosed(UprobeExporterError):
    """The JSON output pipe was closed by its reader (``uprobe-exporter run | head``)."""

    exit_code = 0


class MetricsError(UprobeExporterError):
    """The metrics endpoint could not be served."""


class TraceParseError(UprobeExporterError):
    """A trace line (or ``uprobe_profile`` line) that does not parse: raised inside its parser, caught and
    counted by the caller (never fatal); ``reason`` is a short label used as a metric label."""

    def __init__(self, reason: str, raw: str = "") -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(f"{reason}: {raw!r}")


E = TypeVar("E", bound=UprobeExporterError)


def describe_oserror(exc: OSError, what: str, fix: str | Mapping[int, str] = "") -> str:
    """The one wording of an ``OSError`` in our messages: ``{what}: {strerror}; {fix}``, e.g.
    ``cannot read /etc/ue.toml: Permission denied``. ``what`` says what we tried and names the path;
    ``fix`` is the remedy, or one per errno (``{errno.EACCES: "run as root"}``) where it depends on it."""
    if isinstance(fix, Mapping):
        fix = fix.get(exc.errno or 0, "")
    return f"{what}: {exc.strerror or exc}" + (f"; {fix}" if fix else "")


def mapped_oserror(
    exc: OSError, error: type[E], what: str, *, path: object = "", fix: str | Mapping[int, str] = "",
) -> E:
    """``exc`` as ``error`` (raise it ``from exc``): for an ``except OSError`` clause that must do more
    than map it (close a descriptor, retry on EBUSY first)."""
    return error.with_path(describe_oserror(exc, what, fix), str(path))


@contextlib.contextmanager
def os_errors(
    error: type[UprobeExporterError], what: str, *, path: object = "", fix: str | Mapping[int, str] = "",
) -> Iterator[None]:
    """Map any ``OSError`` raised inside to ``error`` (``raise ... from exc``), worded by
    ``describe_oserror``: ``with os_errors(TracefsError, f"cannot read {path}", path=path): ...``.
    Keep the block to the I/O calls themselves."""
    try:
        yield
    except OSError as exc:
        raise mapped_oserror(exc, error, what, path=path, fix=fix) from exc


def is_gone(err: int | None) -> bool:
    """The errno (``OSError.errno``, ``KernelRefusedError.errno``) says the file, process or event went
    away while we looked: ENOENT, ENOTDIR (a parent went), ESRCH (a ``/proc/<pid>`` file of a process
    that exited), ENODEV (a tracefs instance removed under us)."""
    return err in (errno_codes.ENOENT, errno_codes.ENOTDIR, errno_codes.ESRCH, errno_codes.ENODEV)


def is_busy(err: int | None) -> bool:
    """The errno says try again later: EBUSY (an event enabled somewhere, a file of an instance open)."""
    return err == errno_codes.EBUSY
