"""Pure: the kubelet's log layout on the node → namespace, pod and container names, without the API server.

    /var/log/pods/<namespace>_<pod>_<pod-uid>/<container>/0.log
    /var/log/containers/<pod>_<namespace>_<container>-<container-id>.log -> /var/log/pods/...

Names of namespaces, pods and containers are DNS labels or subdomains (no ``_``), a UID has none
either: ``_`` separates the parts (kubelet: pkg/kubelet/kuberuntime/helpers.go BuildPodLogsDirectory,
logs.go BuildContainerLogsDirectory). The ``containers`` links map a container id to its name, which
tells apart the containers of a multi-container pod; a pod with one container directory needs none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class PodDir:
    """``<namespace>_<pod>_<uid>`` under ``/var/log/pods``."""

    namespace: str
    pod: str
    uid: str


@dataclass(frozen=True, slots=True)
class ContainerLink:
    """``<pod>_<namespace>_<container>-<id>.log`` under ``/var/log/containers``."""

    pod: str
    namespace: str
    container: str
    container_id: str


@dataclass(frozen=True, slots=True)
class PodIdentity:
    """What a record says about the pod it came from (``container`` and ``container_id`` may be "")."""

    namespace: str
    pod: str
    container: str = ""
    container_id: str = ""


def parse_pod_dir(name: str) -> PodDir | None:
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    return PodDir(*parts)


def parse_container_link(name: str) -> ContainerLink | None:
    if not name.endswith(".log"):
        return None
    parts = name[:-4].split("_")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    container, sep, cid = parts[2].rpartition("-")
    if not sep or not container or not CONTAINER_ID_RE.match(cid):
        return None
    return ContainerLink(parts[0], parts[1], container, cid)


@dataclass(frozen=True, slots=True)
class PodLogIndex:
    """The node's pods by UID (with their container directories) and container names by id."""

    pods: Mapping[str, tuple[PodDir, tuple[str, ...]]]
    containers: Mapping[str, ContainerLink]

    def identify(self, pod_uid: str, container_id: str) -> PodIdentity | None:
        """The names of a pod UID and container id from ``/proc/<pid>/cgroup``; None for an unknown pod."""
        entry = self.pods.get(pod_uid)
        if entry is None:
            return None
        pod, containers = entry
        link = self.containers.get(container_id) if container_id else None
        if link is not None and (link.namespace, link.pod) == (pod.namespace, pod.pod):
            name = link.container
        else:
            name = containers[0] if len(containers) == 1 else ""
        return PodIdentity(pod.namespace, pod.pod, name, container_id)


def index_pod_logs(pods: Iterable[tuple[str, Iterable[str]]], links: Iterable[str]) -> PodLogIndex:
    """``pods``: each directory name under ``pods_dir`` with its subdirectory names; ``links``: the file
    names under the ``containers`` directory. Names that do not follow the layout are skipped."""
    by_uid: dict[str, tuple[PodDir, tuple[str, ...]]] = {}
    for name, subdirs in pods:
        pod = parse_pod_dir(name)
        if pod is not None:
            by_uid[pod.uid] = (pod, tuple(sorted(subdirs)))
    containers = {}
    for name in links:
        link = parse_container_link(name)
        if link is not None:
            containers[link.container_id] = link
    return PodLogIndex(by_uid, containers)
