"""Pure: ``/proc/<pid>/cgroup`` → the container id and the pod UID the kubelet gave the process.

    0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0f1c2d3e_4a5b_6c7d_8e9f_0a1b2c3d4e5f.slice/
       cri-containerd-<64 hex>.scope   (one line)

Strategy: the kubelet names a pod's cgroup after its UID and the runtime names the container's cgroup
after its id, whatever the layout around them, so each path is read component by component:
- systemd driver: ``kubepods[-<qos>]-pod<uid with '_' for '-'>.slice`` then ``cri-containerd-<id>.scope``
  (containerd), ``crio-<id>.scope`` (CRI-O) or ``docker-<id>.scope`` (Docker);
- cgroupfs driver: ``pod<uid>`` then ``<id>`` (``/kubepods/besteffort/pod<uid>/<id>``);
- Guaranteed pods have no QoS level (``kubepods-pod<uid>.slice``, ``/kubepods/pod<uid>``);
- read from inside a cgroup namespace, a path is relative to that namespace's root and may start with
  ``/..`` components (kernel/cgroup/cgroup.c: cgroup_path_ns), or be cut above the pod: only what is
  seen is used.
The cgroup v2 line (``0::``) is preferred; on cgroup v1 every hierarchy carries the same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UID_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?\Z")
CONTAINER_RE = re.compile(r"(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?\Z")


@dataclass(frozen=True, slots=True)
class CgroupIdentity:
    """Where a process sits in the kubelet's cgroups: its pod's UID and its container's id."""

    pod_uid: str
    container_id: str = ""  # "" when the path stops at the pod (a process put in the pod's cgroup)


def parse_cgroup_path(path: str) -> CgroupIdentity | None:
    """One cgroup path → the pod UID and container id it names, or None outside any pod."""
    parts = [p for p in path.split("/") if p and p != ".."]
    for i, part in enumerate(parts):
        m = UID_RE.search(part)
        if m is None or not (part.startswith("pod") or "-pod" in part):
            continue
        uid = m[1].replace("_", "-")
        container = ""
        if i + 1 < len(parts):
            c = CONTAINER_RE.match(parts[i + 1])
            if c is not None and not parts[i + 1].startswith("crio-conmon-"):
                container = c[1]
        return CgroupIdentity(uid, container)
    return None


def parse_cgroup(text: str) -> CgroupIdentity | None:
    """The lines of ``/proc/<pid>/cgroup`` (``hierarchy-ID:controllers:path``) → the pod and container,
    from the cgroup v2 line when it names them, else from the first v1 hierarchy that does."""
    found: CgroupIdentity | None = None
    for line in text.splitlines():
        hierarchy, sep, rest = line.partition(":")
        _, sep2, path = rest.partition(":")
        if not sep or not sep2:
            continue
        ident = parse_cgroup_path(path)
        if ident is None:
            continue
        if hierarchy == "0":
            return ident
        if found is None or (not found.container_id and ident.container_id):
            found = ident
    return found
