"""Discovery's pure parts: the discover configuration, which processes and libraries a probe follows."""

from __future__ import annotations

from typing import Any

import pytest

from uprobe_exporter.plan.config import DiscoverConfig, ExporterConfig, parse_config, parse_config_partial
from uprobe_exporter.processes.podlogs import PodIdentity
from uprobe_exporter.run.discover import exe_matches, library_matches, pod_matches

WEB = PodIdentity("shop", "web-7d9f", "nginx", "a" * 64)


def probes(*tables: dict[str, Any], **exporter: Any) -> dict[str, Any]:
    return {"exporter": exporter, "probes": list(tables)}


def test_a_discover_probe_needs_no_binary() -> None:
    config = parse_config(probes({"name": "handle", "discover": {"exe": "nginx", "namespace": "shop"},
                                  "function": "ngx_http_process_request"}))
    assert config.probes[0].discover == DiscoverConfig("nginx", "shop") and config.probes[0].binary == ""
    assert config.exporter == ExporterConfig()  # the discover settings' defaults
    assert (config.exporter.pods_dir, config.exporter.discover_interval, config.exporter.discover_files_max,
            config.exporter.discover_grace_seconds) == ("/var/log/pods", 1.0, 16, 5.0)


@pytest.mark.parametrize(("table", "exporter", "problem"), [
    ({"discover": {"pod": "web"}}, {}, 'probes[0] "p".discover.exe: required'),
    ({"discover": {"exe": "x", "image": "y"}}, {}, "discover.image: unknown key"),
    ({"discover": "nginx"}, {}, "must be a table"),
    ({"discover": {"exe": 3}}, {}, "must be str"),
    ({}, {}, "binary: required"),
    ({"discover": {"exe": "x"}, "name": "n" * 51}, {}, "too long for discover"),
    ({"discover": {"exe": "x"}}, {"discover_interval": 0}, "exporter.discover_interval"),
    ({"discover": {"exe": "x"}}, {"discover_files_max": 0}, "exporter.discover_files_max"),
    ({"discover": {"exe": "x"}}, {"discover_grace_seconds": -1}, "exporter.discover_grace_seconds"),
    ({"discover": {"exe": "x"}}, {"pods_dir": "var/log/pods"}, "exporter.pods_dir"),
])
def test_bad_discover_settings_are_located(table: dict[str, Any], exporter: dict[str, Any], problem: str) -> None:
    _, problems = parse_config_partial(probes({"name": "p", "function": "f", **table}, **exporter))
    assert any(problem in p for p in problems), problems


def test_pod_labels_are_histogram_labels() -> None:
    labels = ["k8s_namespace_name", "k8s_pod_name", "k8s_container_name"]
    config = parse_config(probes({"name": "p", "discover": {"exe": "x"}, "function": "f", "return": True,
                                  "latency": True, "labels": labels}))
    assert list(config.probes[0].labels) == labels
    _, problems = parse_config_partial(probes({"name": "p", "binary": "/bin/x", "function": "f", "return": True,
                                               "latency": True, "labels": ["namespace"]}))
    assert problems and "did you mean 'k8s_namespace_name'" in problems[0]


def test_exe_globs_match_the_file_name_or_with_a_slash_the_path() -> None:
    assert exe_matches(DiscoverConfig("nginx"), "/usr/sbin/nginx")
    assert exe_matches(DiscoverConfig("ngin?"), "/usr/sbin/nginx")
    assert not exe_matches(DiscoverConfig("nginx"), "/usr/sbin/nginx-debug")
    assert not exe_matches(DiscoverConfig("sbin"), "/usr/sbin/nginx")
    assert exe_matches(DiscoverConfig("/usr/sbin/*"), "/usr/sbin/nginx")
    assert not exe_matches(DiscoverConfig("/usr/bin/*"), "/usr/sbin/nginx")
    assert not exe_matches(DiscoverConfig("NGINX"), "/usr/sbin/nginx")  # case matters, as in the file system


def test_pod_globs_need_a_pod_that_matches_them_all() -> None:
    assert pod_matches(DiscoverConfig("x"), None) and pod_matches(DiscoverConfig("x"), WEB)
    assert pod_matches(DiscoverConfig("x", namespace="shop"), WEB)
    assert pod_matches(DiscoverConfig("x", namespace="sh*", pod="web-*", container="nginx"), WEB)
    assert not pod_matches(DiscoverConfig("x", namespace="shop", container="sidecar"), WEB)
    assert not pod_matches(DiscoverConfig("x", namespace="*"), None)  # outside any pod
    assert not pod_matches(DiscoverConfig("x", container="nginx"), PodIdentity("shop", "web", "", "a" * 64))


def test_library_names_match_mapped_files() -> None:
    assert library_matches("libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")
    assert library_matches("libssl.so*", "/usr/lib/libssl.so.3")
    assert not library_matches("libc.so.6", "/usr/lib/libc.so.6.1")
    assert library_matches("/opt/*/libx.so", "/opt/app/libx.so")
