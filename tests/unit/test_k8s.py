"""The Kubernetes identity parsers (cgroup.py, podlogs.py, procmaps.py) and the identity shell
(identity.py) on committed fixture trees."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from uprobe_exporter.processes.cgroup import CgroupIdentity, parse_cgroup, parse_cgroup_path
from uprobe_exporter.processes.identity import PodIdentities, read_pod_logs
from uprobe_exporter.processes.podlogs import ContainerLink, PodDir, PodIdentity, parse_container_link, parse_pod_dir
from uprobe_exporter.processes.procmaps import (
    layer_candidates,
    mapped_paths,
    mount_of,
    parse_maps,
    parse_mountinfo,
    unescape,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "k8s"
UID = "0f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f"
CID = "4f1b0e6c2a7d9e3b5c8a1f0d2e4b6a8c9d1e3f5a7b9c0d2e4f6a8b0c1d3e5f7a"


@pytest.mark.parametrize("name", ["containerd-systemd-v2", "cgroupfs-v1", "crio-guaranteed", "docker-burstable",
                                  "cgroupfs-guaranteed-v2", "cgroupns"])
def test_pod_and_container_from_each_layout(name: str) -> None:
    assert parse_cgroup((FIXTURES / "cgroup" / name).read_text()) == CgroupIdentity(UID, CID)


@pytest.mark.parametrize("name", ["not-in-pod", "docker-no-pod", "root"])
def test_outside_any_pod(name: str) -> None:
    assert parse_cgroup((FIXTURES / "cgroup" / name).read_text()) is None


def test_conmon_is_in_the_pod_but_no_container() -> None:
    assert parse_cgroup((FIXTURES / "cgroup" / "crio-conmon").read_text()) == CgroupIdentity(UID, "")


def test_path_cut_at_the_pod_and_garbage() -> None:
    assert parse_cgroup_path(f"/kubepods/besteffort/pod{UID}") == CgroupIdentity(UID, "")
    assert parse_cgroup_path("/kubepods/besteffort/podnot-a-uid/abc") is None
    assert parse_cgroup_path(f"/x/notapod{UID}/{CID}") is None
    assert parse_cgroup("garbage\n\n1:cpu\n") is None


def test_v2_line_wins_over_v1() -> None:
    other = "1" * 64
    text = f"3:pids:/kubepods/pod{UID}/{other}\n0::/kubepods/pod{UID}/{CID}\n"
    assert parse_cgroup(text) == CgroupIdentity(UID, CID)


def test_pod_dir_and_container_link_names() -> None:
    assert parse_pod_dir(f"shop_web-7d9f_{UID}") == PodDir("shop", "web-7d9f", UID)
    assert parse_pod_dir("a_b") is None and parse_pod_dir("a__c") is None
    assert parse_container_link(f"web-7d9f_shop_nginx-x-{CID}.log") == ContainerLink("web-7d9f", "shop", "nginx-x", CID)
    assert parse_container_link(f"web_shop_nginx-{CID}") is None
    assert parse_container_link("web_shop_nginx-abc.log") is None


def test_index_of_the_fixture_tree() -> None:
    index = read_pod_logs(FIXTURES / "var/log/pods", FIXTURES / "var/log/containers")
    assert set(index.pods) == {UID, "11111111-2222-3333-4444-555555555555"}
    # two containers: the link names the one of this id; an unknown id of that pod: no container name
    assert index.identify(UID, CID) == PodIdentity("shop", "web-7d9f", "nginx", CID)
    assert index.identify(UID, "c" * 64) == PodIdentity("shop", "web-7d9f", "", "c" * 64)
    # one container directory: its name, without a link
    assert index.identify("11111111-2222-3333-4444-555555555555", "d" * 64) == PodIdentity(
        "kube-system", "coredns-1", "coredns", "d" * 64)
    assert index.identify("99999999-2222-3333-4444-555555555555", CID) is None
    assert read_pod_logs(FIXTURES / "missing", FIXTURES / "missing").pods == {}


def _proc(tmp_path: Path, pids: dict[int, str]) -> str:
    for pid, name in pids.items():
        (tmp_path / str(pid)).mkdir()
        shutil.copy(FIXTURES / "cgroup" / name, tmp_path / str(pid) / "cgroup")
    return str(tmp_path)


def test_identities_cached_per_process_and_kept_after_exit(tmp_path: Path) -> None:
    now = [0.0]
    proc = _proc(tmp_path, {10: "containerd-systemd-v2", 11: "not-in-pod"})
    ids = PodIdentities(FIXTURES / "var/log/pods", FIXTURES / "var/log/containers", proc, keep_seconds=5,
                        clock=lambda: now[0])
    assert ids(10) == PodIdentity("shop", "web-7d9f", "nginx", CID)
    assert ids(11) is None
    shutil.rmtree(tmp_path / "10")  # exited: keeps what it had
    assert ids(10) == PodIdentity("shop", "web-7d9f", "nginx", CID)
    ids.forget_exited()
    now[0] = 6.0
    ids.forget_exited()
    assert 10 not in ids.cache and 11 in ids.cache
    assert ids(10) is None  # gone and unknown now


def test_a_pod_newer_than_the_index_is_found_on_refresh(tmp_path: Path) -> None:
    now = [0.0]
    pods, links = tmp_path / "pods", tmp_path / "containers"
    pods.mkdir()
    links.mkdir()
    (tmp_path / "proc").mkdir()
    proc = _proc(tmp_path / "proc", {20: "cgroupfs-v1"})
    ids = PodIdentities(pods, links, proc, refresh_seconds=1.0, clock=lambda: now[0])
    assert ids(20) == PodIdentity("", "", "", CID)  # the pod's directory is not there yet: not cached
    (pods / f"shop_web_{UID}" / "nginx").mkdir(parents=True)
    assert ids(20) == PodIdentity("", "", "", CID)  # read again at most once a second
    now[0] = 1.5
    assert ids(20) == PodIdentity("shop", "web", "nginx", CID)
    assert ids.cache[20] == PodIdentity("shop", "web", "nginx", CID)


MAPS = (FIXTURES / "maps").read_text()


def test_maps() -> None:
    maps = parse_maps(MAPS)
    assert [m.path for m in maps] == ["/usr/sbin/nginx", "/usr/sbin/nginx", "/lib/x86_64-linux-gnu/libc.so.6",
                                      "/a path/with spaces.so"]
    assert maps[0].dev == os.makedev(0xFD, 1) and maps[0].inode == 1234567 and maps[1].offset == 0x1000
    assert maps[2].dev == os.makedev(0x103, 2) and maps[2].perms == "r-xp"
    assert mapped_paths(maps) == ("/usr/sbin/nginx", "/lib/x86_64-linux-gnu/libc.so.6", "/a path/with spaces.so")


MOUNTINFO = (FIXTURES / "mountinfo").read_text()


def test_mountinfo_and_overlay_layers() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == ["/", "/tmp/ov t/m1", "/tmp/ov t/m1/proc", "/"]
    assert mounts[1].lowerdirs == ("/l/a:b", "/l/c") and mounts[1].upperdir == "/u1"
    assert mount_of(mounts, "/tmp/ov t/m1/sl") == mounts[1]
    assert layer_candidates(mounts, "/tmp/ov t/m1/bin/sl") == ("/u1/bin/sl", "/l/a:b/bin/sl", "/l/c/bin/sl")
    # a container's root: the last mount of "/" hides the first
    assert layer_candidates(mounts, "/usr/sbin/nginx") == (
        "/var/lib/containerd/s/9/fs/usr/sbin/nginx", "/var/lib/containerd/s/3/fs/usr/sbin/nginx",
        "/var/lib/containerd/s/2/fs/usr/sbin/nginx")
    assert layer_candidates(mounts, "/tmp/ov t/m1/proc/1") == ()
    assert unescape(r"a\011b\\") == "a\tb\\\\"
