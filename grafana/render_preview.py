#!/usr/bin/env python3
"""Render grafana/preview.png, a picture of the dashboard's key panels drawn from REAL data.

Grafana itself is not needed: this runs the exporter (as a real process, as root) on the test target
tests/targets/sleeper.c, lets a real Prometheus (Debian package `prometheus`) scrape it every second while the
target runs a varying load, then runs the dashboard's own queries (grafana/uprobe-exporter.json, with Grafana's
variables filled in) over query_range and plots them with matplotlib in a Grafana-like dark theme.

    pip install matplotlib        # the only extra need; gcc and prometheus as for the tests
    sudo python3 grafana/render_preview.py [--seconds 90] [--output grafana/preview.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import matplotlib as mpl  # noqa: E402

mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter, MultipleLocator  # noqa: E402

from tests.helpers import TARGETS, ExporterProcess, build_config, compile_c, toml_dumps  # noqa: E402
from tests.prom import PrometheusServer, free_port  # noqa: E402
from uprobe_exporter.kernel.session import remove_group  # noqa: E402
from uprobe_exporter.kernel.tracefs import Tracefs, find_tracefs  # noqa: E402

DASHBOARD = ROOT / "grafana" / "uprobe-exporter.json"
BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5]
RATE_INTERVAL = "8s"  # $__rate_interval: 4 scrape intervals of 1 s, plus the step, rounded up for smoother lines
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
# Grafana's dark theme and classic palette
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0"]
Series = list[dict[str, Any]]
Results = dict[tuple[str, str], tuple[str, Series]]  # (panel title, refId) -> (legendFormat, series)


def substitute(text: str, values: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        return values[m.group(1) or m.group(2)]

    return VARIABLE.sub(one, text)


def legend(fmt: str, metric: dict[str, str]) -> str:
    return LEGEND.sub(lambda m: metric.get(m.group(1), ""), fmt).strip()


def panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    for p in dashboard["panels"]:
        if p.get("title") == title:
            found: dict[str, Any] = p
            return found
    raise KeyError(title)


def workload(binary: Path, seconds: float) -> None:
    """A load that rises and falls: 1 to 8 threads of sleeper calls, now and then a thread exiting mid-call."""
    start = time.monotonic()
    run = 0
    while (elapsed := time.monotonic() - start) < seconds:
        threads = 1 + round(7 * math.sin(math.pi * elapsed / seconds) ** 2)
        subprocess.run([str(binary), str(threads), "25", "1" if run % 5 == 4 else "0"], stdout=subprocess.DEVNULL,
                       check=True, timeout=120)
        run += 1


def collect(seconds: float, workdir: Path) -> tuple[Results, float]:
    """Run exporter, target and Prometheus; return the results of the dashboard's queries by (title, refId)."""
    binary = compile_c(TARGETS / "sleeper.c", workdir / "sleeper")
    group = f"uepreview_{os.getpid()}"
    port = free_port()
    instance = f"127.0.0.1:{port}"
    probe = {"name": "sleeper", "binary": str(binary), "function": "sleeper", "args": {"ms": "%di:s32"},
             "return": True, "latency": True, "buckets": BUCKETS, "labels": ["comm"]}
    config = workdir / "config.toml"
    config.write_text(toml_dumps(build_config(group, [probe], workdir / "out.jsonl", metrics={"listen": instance})))
    dashboard = json.loads(DASHBOARD.read_text())
    (workdir / "prometheus").mkdir()
    prometheus = PrometheusServer(workdir / "prometheus")
    tracefs = Tracefs(find_tracefs("auto"))
    try:
        with ExporterProcess(config) as exporter:
            exporter.wait_ready()
            prometheus.set_targets([instance])
            prometheus.wait_for(f'count_over_time(up{{instance="{instance}"}}[5m])',
                                lambda r: bool(r) and float(r[0]["value"][1]) >= 5)
            start = time.time()
            workload(binary, seconds)
            time.sleep(4)  # let the rates fall back to 0 in the picture
            end = time.time()
            rc, _ = exporter.stop()
            if rc != 0:
                raise SystemExit(f"exporter exited with {rc}:\n{exporter.stderr}")
        values = {"instance": re.sub(r"([.])", r"\\\\\1", instance), "probe": ".*", "__rate_interval": RATE_INTERVAL,
                  "__range": f"{math.ceil(end - start)}s", "__interval": "1s"}
        results: Results = {}
        for p in dashboard["panels"]:
            for target in p.get("targets", []):
                series = prometheus.api("query_range", query=substitute(target["expr"], values),
                                        start=f"{start:.3f}", end=f"{end:.3f}", step="1")["result"]
                results[p["title"], target["refId"]] = (target.get("legendFormat", ""), series)
        return results, end - start
    finally:
        prometheus.close()
        if any(e.group == group for e in tracefs.read_uprobe_events()) or tracefs.instance(group).exists():
            remove_group(tracefs, group, tracefs.instance(group))


def style(ax: Axes, title: str, unit: str, seconds: float) -> None:
    ax.set_facecolor(PANEL)
    ax.set_title(title, color=TEXT, fontsize=10, loc="left", fontweight="bold")
    ax.tick_params(colors=TEXT, labelsize=7.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(color=GRID, linewidth=0.6)
    ax.set_ylabel(unit, color=TEXT, fontsize=8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: time.strftime("%H:%M:%S", time.localtime(v))))
    ax.xaxis.set_major_locator(MultipleLocator(30 if seconds > 60 else 10))


def times(series: dict[str, Any]) -> list[float]:
    return [float(t) for t, _ in series["values"]]


def numbers(series: dict[str, Any], scale: float = 1.0) -> list[float]:
    return [float(v) * scale for _, v in series["values"]]


def lines(ax: Axes, results: Results, title: str, refs: str = "A", scale: float = 1.0, dashed: str = "",
          where: Literal["upper left", "lower right"] = "upper left") -> None:
    color = 0
    for ref in refs:
        fmt, result = results[title, ref]
        for series in result:
            ax.plot(times(series), numbers(series, scale), color=PALETTE[color % len(PALETTE)],
                    linewidth=1.4 if ref in dashed else 2.4 if dashed else 1.6,
                    linestyle="--" if ref in dashed else "-", label=legend(fmt, series["metric"]))
            color += 1
    ax.legend(loc=where, fontsize=7.5, frameon=False, labelcolor=TEXT, ncol=3 if where != "upper left" else 1)
    top = ax.get_ylim()[1]
    ax.set_ylim(0, top * 1.25 if ax.get_yscale() == "linear" else top * 2)  # room for the legend


def heatmap(ax: Axes, results: Results) -> None:
    rows = sorted(results["Call latency heatmap", "A"][1], key=lambda s: float(s["metric"]["le"]))
    cumulative = [numbers(s) for s in rows]
    counts = [[c - (cumulative[i - 1][j] if i else 0.0) for j, c in enumerate(row)]
              for i, row in enumerate(cumulative)]
    x = times(rows[0])
    step = x[1] - x[0] if len(x) > 1 else 1.0
    edges_x = [*(v - step / 2 for v in x), x[-1] + step / 2]
    mesh = ax.pcolormesh(edges_x, range(len(rows) + 1), counts, cmap="Oranges_r", shading="flat")
    labels = ["0", *(f"{b * 1000:g} ms" for b in BUCKETS), "+Inf"]
    ax.set_yticks(range(len(rows) + 1), labels[:len(rows) + 1])
    bar = plt.colorbar(mesh, ax=ax, pad=0.01, fraction=0.05)
    bar.ax.tick_params(colors=TEXT, labelsize=7)
    bar.set_label("calls/s", color=TEXT, fontsize=8)
    bar.outline.set_visible(False)


def render(results: Results, seconds: float, output: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.6), dpi=80)
    fig.patch.set_facecolor(BACKGROUND)
    (calls, versus, latency), (heat, cpu, memory) = axes
    style(calls, "Calls/s per probe", "calls/s", seconds)
    lines(calls, results, "Calls/s per probe")
    style(versus, "Kernel hits vs records emitted", "events/s", seconds)
    lines(versus, results, "Kernel hits vs records emitted", refs="AB", dashed="B")
    style(latency, "Call latency p50 / p90 / p99", "ms", seconds)
    latency.set_yscale("symlog", linthresh=1)
    lines(latency, results, "Call latency p50 / p90 / p99", refs="ABC", scale=1000, where="lower right")
    latency.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    style(heat, "Call latency heatmap", "latency bucket", seconds)
    heatmap(heat, results)
    style(cpu, "Exporter CPU", "% of one core", seconds)
    lines(cpu, results, "Exporter CPU", scale=100)
    style(memory, "Exporter memory", "MiB", seconds)
    lines(memory, results, "Exporter memory", scale=1 / 2**20)
    fig.suptitle(f"uprobe exporter dashboard: real data, sleeper target under a varying load for {seconds:.0f} s, "
                 "scraped by Prometheus every 1 s", color=TEXT, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(output, facecolor=BACKGROUND, format="png", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=90, help="how long the target runs (default 90)")
    parser.add_argument("--output", type=Path, default=ROOT / "grafana" / "preview.png")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("render_preview.py registers uprobes: run it as root")
    with tempfile.TemporaryDirectory(prefix="uprobe-preview-") as tmp:
        results, seconds = collect(args.seconds, Path(tmp))
    render(results, seconds, args.output)
    print(f"{args.output}: {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
