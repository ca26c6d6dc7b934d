"""Pure: the JSON lines of a batch, as the raw pipeline's emitters append them (``LineList``, the
reference; its native twin ``_native.Lines`` keeps them in one buffer, which native emitters render
straight into; backend.py chooses one)."""

from __future__ import annotations

from typing import Protocol


class Lines(Protocol):
    """What both twins implement: ``append`` a line, ``take`` the batch (joined, and how many) and empty."""

    def __len__(self) -> int: ...
    def append(self, line: bytes, /) -> None: ...
    def take(self) -> tuple[bytes, int]: ...


class LineList(list[bytes]):
    """The reference: a list whose ``take`` joins and empties."""

    def take(self) -> tuple[bytes, int]:
        batch = (b"".join(self), len(self))
        self.clear()
        return batch
