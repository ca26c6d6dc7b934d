"""What the running kernel's tracefs accepts, found by trying it: one ``UE-VM-FEATURE name=value`` line per
feature on stdout. tests/vm/run-kernels runs it in each VM after the test subset; README's "Supported
kernels" table is filled from its lines. Registers only in its own group (and removes it); never enables
anything but its own events in its own instance."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from uprobe_exporter.errors import KernelRefusedError, TracefsError
from uprobe_exporter.kernel.session import remove_events
from uprobe_exporter.kernel.tracefs import Instance, Tracefs, find_tracefs, read_text
from uprobe_exporter.plan.elf import load_elf

GROUP = "uevm_features"
SOURCE = 'int work(int a, const char *s) { return a + s[0]; }\nint main(void) { return work(1, "x") == 0; }\n'


def refusal(exc: KernelRefusedError) -> str:
    """The kernel's own words: the error_log entry's text, else the errno."""
    m = re.search(r"error: (.+)", exc.error_log or "")
    return f"no ({m[1].strip()})" if m else f"no ({exc.args[0].split('(')[-1].rstrip(')')})"


def remove(fs: Tracefs, group: str, instance: Instance | None = None) -> None:
    """Our group's events, each name once (a multi-probe event is listed once per probe, removed at once)."""
    events = list(dict.fromkeys(e.event for e in fs.read_uprobe_events() if e.group == group))
    remove_events(fs, group, events, instance)


class Prober:
    def __init__(self, fs: Tracefs, binary: Path) -> None:
        self.fs = fs
        elf = load_elf(binary)
        self.at = f"{binary}:{elf.resolve('work'):#x}"
        self.at_main = f"{binary}:{elf.resolve('main'):#x}"
        self.report: dict[str, str] = {}

    def accepts(self, name: str, *commands: str, groups: tuple[str, ...] = (GROUP,)) -> bool:
        """Whether the kernel takes ``commands`` in order; everything they created is removed after."""
        try:
            for command in commands:
                self.fs.write_uprobe_events(command)
            self.report[name] = "yes"
        except KernelRefusedError as exc:
            self.report[name] = refusal(exc)
        finally:
            for group in groups:
                remove(self.fs, group)
        return self.report[name] == "yes"

    def fetchargs(self) -> None:
        at = self.at
        self.accepts("string", f"p:{GROUP}/a {at} s=+0(%si):string")
        self.accepts("ustring", f"p:{GROUP}/a {at} s=+0(%si):ustring")
        self.accepts("comm", f"p:{GROUP}/a {at} c=$comm")
        self.accepts("char", f"p:{GROUP}/a {at} c=+0(%si):char")
        self.accepts("string_array", f"p:{GROUP}/a {at} s=+0(%sp):string[2]")
        self.accepts("immediate_string", f'p:{GROUP}/a {at} s=\\"abc":string')
        self.accepts("ref_ctr_offset", f"p:{GROUP}/a {at}(0x10)")  # parsed only: never enabled here
        self.accepts("multi_probe_event", f"p:{GROUP}/a {at} x=%di:s32", f"p:{GROUP}/a {self.at_main} x=%di:s32")
        self.accepts("return_suffix", f"p:{GROUP}/a {at}%return")
        self.accepts("dot_separator", f"p:{GROUP}.a {at}")
        self.accepts("dash_in_group", f"p:{GROUP}-x/a {at}", groups=(f"{GROUP}-x",))

    def files(self) -> None:
        root = self.fs.root
        self.report["error_log"] = "yes" if (root / "error_log").exists() else "no"
        self.report["dynamic_events"] = "yes" if (root / "dynamic_events").exists() else "no"
        self.report["options_fields"] = "yes" if (root / "options" / "fields").exists() else "no"
        self.report["buffer_subbuf_size_kb"] = "yes" if (root / "buffer_subbuf_size_kb").exists() else "no"
        self.report["buffer_percent"] = "yes" if (root / "buffer_percent").exists() else "no"
        header = read_text(root / "events" / "header_page")
        m = re.search(r"local_t commit;\toffset:(\d+);\tsize:(\d+);", header)
        d = re.search(r"char data;\toffset:(\d+);\tsize:(\d+);", header)
        self.report["header_page"] = (f"commit@{m[1]}/{m[2]},data@{d[1]}/{d[2]}" if m and d
                                      else "unrecognised:" + header.replace("\n", "|")[:120])

    def hit(self, binary: Path) -> None:
        """One real hit recorded in our instance: the text line's shape and the format's array notation."""
        instance = self.fs.instance(GROUP)
        try:
            self.fs.write_uprobe_events(f"p:{GROUP}/h {self.at} a=%di:s32 s=+0(%si):string v=+0(%si):u8[2]")
            instance.create()
            instance.set_enabled(GROUP, "h", True)
            subprocess.run([str(binary)], check=False)
            instance.set_enabled(GROUP, "h", False)
            trace = read_text(instance.root / "trace")
            fmt = instance.read_format(GROUP, "h")
        finally:
            remove(self.fs, GROUP, instance)
        line = next((ln for ln in trace.splitlines() if " h: (0x" in ln), "")
        m = re.match(r"(.{16})-(\d+ *) \[(\d+)\] (\S+) +\d+\.\d{6}: h: \(0x[0-9a-f]+\) (.*)", line)
        if not m:
            self.report["trace_line"] = "unrecognised:" + line[:120]
            return
        self.report["pid_width"] = str(len(m[2]))
        self.report["flag_chars"] = str(len(m[4]))
        self.report["trace_line"] = m[5].replace(" ", "_")
        arr = re.search(r"field:u8 v(\[\d*\]);", fmt)
        self.report["format_array"] = arr[1] if arr else "?"


def main() -> int:
    try:
        fs = Tracefs(find_tracefs("auto"))
        with tempfile.TemporaryDirectory() as tmp:
            src, binary = Path(tmp, "t.c"), Path(tmp, "t")
            src.write_text(SOURCE)
            subprocess.run(["gcc", "-O0", "-o", str(binary), str(src)], check=True)
            prober = Prober(fs, binary)
            prober.files()
            prober.fetchargs()
            prober.hit(binary)
    except (TracefsError, subprocess.CalledProcessError) as exc:
        print(f"UE-VM-FEATURE probe_error={str(exc).replace(' ', '_')}")
        return 1
    for name, value in prober.report.items():
        print(f"UE-VM-FEATURE {name}={value.replace(' ', '_')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
