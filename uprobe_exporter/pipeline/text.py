"""Pure: the text reader's pipeline: batches of ``trace_pipe`` lines, parsed into records that the
shared record path (calls.py) counts, pairs and renders."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from uprobe_exporter.decode.rawpage import Handler
from uprobe_exporter.decode.traceline import TextParser
from uprobe_exporter.kernel.formatfile import EventFormat
from uprobe_exporter.pipeline.calls import Pipeline, event_infos
from uprobe_exporter.pipeline.histogram import Histogram, SeriesFactory
from uprobe_exporter.pipeline.pairing import Pairing
from uprobe_exporter.pipeline.render import EventInfo, Renderer
from uprobe_exporter.plan.config import ProbeConfig
from uprobe_exporter.plan.probes import ProbeEvent
from uprobe_exporter.processes.podlogs import PodIdentity

if TYPE_CHECKING:
    from uprobe_exporter.backend import Backend

log = logging.getLogger(__name__)


class TextPipeline(Pipeline):
    """Turns batches of trace lines into JSON lines and metric updates, in timestamp order."""

    def __init__(
        self,
        parser: TextParser,
        infos: dict[str, EventInfo],
        probes: Iterable[ProbeConfig],
        renderer: Renderer | None,
        pairing: Pairing,
        label_values_max: int = 100,
        tgid_of: Callable[[int], int] = lambda tid: 0,
        identity_of: Callable[[int], PodIdentity | None] | None = None,
        new_series: SeriesFactory = Histogram,
    ) -> None:
        super().__init__(infos, probes, renderer, pairing, label_values_max, tgid_of, identity_of, new_series)
        self.parser = parser

    @classmethod
    def of(
        cls, probes: Iterable[ProbeConfig], events: Iterable[ProbeEvent], formats: Iterable[EventFormat],
        backend: Backend, renderer: Renderer | None, max_pending: int, label_values_max: int,
        tgid_of: Callable[[int], int], identity_of: Callable[[int], PodIdentity | None] | None = None,
    ) -> TextPipeline:
        """The pipeline of the registered ``events`` (``formats``: theirs), on ``backend``'s pairing and
        histogram series (the text path's twins)."""
        probes = tuple(probes)
        return cls(TextParser.for_formats(formats), event_infos(events, probes), probes, renderer,
                   Pairing(max_pending, twin=backend.pairing), label_values_max, tgid_of, identity_of,
                   backend.histogram)

    def _add_formats(self, formats: list[EventFormat]) -> dict[int, Handler]:
        for f in formats:
            self.parser.add(f)
        return {}

    def process(self, lines: list[str], final: bool = False) -> tuple[bytes, int] | None:
        """Parse, count, pair; returns the JSON lines of the batch and how many (None: no JSON output)."""
        items, errors = self.parser.parse_lines(lines, final)
        for err in errors:
            self.parse_errors[err.reason] += 1
            log.debug("unparsed trace line (%s): %r", err.reason, err.raw)
        return self.process_items(items)
