"""The Helm chart, the container image and the systemd unit (helm/), checked offline.

Strategy: Helm v4 itself (helm-python-sdk: Helm's Go SDK in a shared library) lints the chart and
renders it; kubernetes-validate checks every core object strictly (unknown fields are errors) against
the OpenAPI schemas of several Kubernetes versions; the monitoring.coreos.com objects, which it does
not know, are checked here against the part of the Prometheus Operator's CRD schema the chart uses.
The rendered config.toml goes through tomllib and the exporter's own ``parse_config``.

The Go runtime runs in a worker process started with ``spawn``: loaded into pytest it would start Go
threads and install Go signal handlers in the process that forks the kernel tests' targets.
"""

from __future__ import annotations

import configparser
import copy
import dataclasses
import hashlib
import importlib.util
import json
import multiprocessing
import re
import shlex
import tomllib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import ROOT
from uprobe_exporter import __version__
from uprobe_exporter.cli import PROG, _parser
from uprobe_exporter.plan.config import DEFAULT_PORT, DiscoverConfig, ExporterConfig, parse_config
from uprobe_exporter.plan.configfile import example_text

MISSING: list[str] = []
try:
    import yaml
except ImportError:
    MISSING.append("PyYAML")
try:
    import jsonschema
except ImportError:
    MISSING.append("jsonschema")
try:
    import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
except ImportError:
    MISSING.append("kubernetes-validate")
if importlib.util.find_spec("helm_python") is None:  # imported only in the worker process
    MISSING.append("helm-python-sdk")

HELM = ROOT / "helm"
CHART = HELM / "uprobe-exporter"
DOCKERFILE = HELM / "Dockerfile"
UNIT = HELM / "systemd" / "uprobe-exporter.service"
RELEASE = "obs"
NAMESPACE = "observability"
FULLNAME = "obs-uprobe-exporter"
CONFIG_PATH = "/etc/uprobe-exporter/config.toml"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion), a current one, and the newest
# the installed kubernetes-validate knows ("latest", resolved at run time).
KUBE_VERSIONS = ("1.30", "1.33", "latest")
MONITORING = "monitoring.coreos.com/v1"

CUSTOM_PROBES: list[dict[str, Any]] = [
    {"name": "nginx_request", "binary": "/usr/sbin/nginx", "function": "ngx_http_process_request",
     "comm": ["nginx"], "return": True, "latency": True, "buckets": [0.0001, 0.001, 0.01, 0.1, 1]},
    {"name": "worker_step", "binary": "/proc/1/root/usr/local/bin/worker", "offset": 4425,
     "args": {"n": "%di:s32"}, "filter": "n > 3", "return": True, "latency": True, "labels": ["n"]},
    {"name": "malloc_calls", "binary": "libc.so.6", "function": "malloc", "args": {"size": "%di:u64"},
     "return": True, "return_args": {"ptr": "$retval:x64"}, "return_filter": "ptr == 0", "latency": True,
     "labels": ["comm"]},
    {"name": "shop_nginx", "discover": {"exe": "nginx", "namespace": "shop", "pod": "web-*", "container": "nginx"},
     "function": "ngx_http_process_request", "return": True, "latency": True,
     "labels": ["k8s_namespace_name", "k8s_pod_name", "k8s_container_name"]},
    {"name": "ssl_write", "binary": "libssl.so.3", "discover": {"exe": "*"}, "function": "SSL_write"},
]
FULL_VALUES: dict[str, Any] = {
    "securityContext": {"mode": "capabilities"},
    "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                       "labels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True, "interval": "20s", "labels": {"release": "kube-prometheus-stack"}},
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
    "priorityClassName": "system-node-critical",
    "podAnnotations": {"example.com/team": "observability"},
    "podLabels": {"team": "observability"},
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "service": {"port": 80},
    "config": {
        "exporter": {"log_level": "debug", "buffer_size_kb": 8192, "max_pending_calls": 1000},
        "metrics": {"listen": ":9600", "label_values_max": 50},
        "probes": CUSTOM_PROBES,
    },
}
TLS_VALUES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "tlsConfig": {"insecureSkipVerify": True}},
    "extraVolumes": [{"name": "tls", "secret": {"secretName": "uprobe-exporter-tls"}}],
    "extraVolumeMounts": [{"name": "tls", "mountPath": "/etc/uprobe-exporter/tls", "readOnly": True}],
    "config": {"metrics": {"tls_cert_file": "/etc/uprobe-exporter/tls/tls.crt",
                           "tls_key_file": "/etc/uprobe-exporter/tls/tls.key"}},
}
NODE_VALUES: dict[str, Any] = {
    "hostRoot": {"enabled": False},
    "tracefs": {"path": "/sys/kernel/debug/tracing"},
    "podLogs": {"enabled": True, "path": "/var/log/k8s/pods"},
    "service": {"enabled": False},
    "serviceAccount": {"create": False},
    "podMonitor": {"enabled": True},
}
VALUE_SETS = {"default": {}, "full": FULL_VALUES, "tls": TLS_VALUES, "node": NODE_VALUES}


@pytest.fixture(autouse=True, scope="module")
def _packages() -> None:
    if MISSING:
        pytest.fail(f"tests/deploy/test_helm.py needs {', '.join(MISSING)}: pip install {' '.join(MISSING)}",
                    pytrace=False)


# --- the helm worker process --------------------------------------------------------------------

def _worker_render(values_json: str) -> tuple[dict[str, str], str]:
    """In the worker: ``helm template``; the manifests, or the error text."""
    import helm_python as helm

    try:
        with helm.Chart.load(str(CHART)) as chart:
            manifests = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    return manifests, ""


def _worker_lint(values_json: str, kube_version: str) -> dict[str, Any]:
    """In the worker: ``helm lint --strict --kube-version``; the report."""
    import helm_python as helm

    return helm.lint(str(CHART), json.loads(values_json), strict=True, kube_version=kube_version)


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj["metadata"].get("annotations") or {})


@dataclass(frozen=True, slots=True)
class Rendered:
    """The manifests of one ``helm template``, parsed."""

    objects: tuple[dict[str, Any], ...]
    notes: str

    def get(self, kind: str) -> dict[str, Any]:
        """The one object of ``kind`` in the release (hooks are not part of it)."""
        found = [o for o in self.objects if o["kind"] == kind and not is_hook(o)]
        assert len(found) == 1, f"{len(found)} objects of kind {kind}"
        return found[0]

    def hook(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind and is_hook(o)]
        assert len(found) == 1, f"{len(found)} hooks of kind {kind}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects if not is_hook(o)}

    def hook_kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects if is_hook(o)}

    def config_toml(self) -> str:
        text = self.get("ConfigMap")["data"]["config.toml"]
        assert isinstance(text, str)
        return text

    def config(self) -> dict[str, Any]:
        return tomllib.loads(self.config_toml())

    def pod_spec(self) -> dict[str, Any]:
        spec = self.get("DaemonSet")["spec"]["template"]["spec"]
        assert isinstance(spec, dict)
        return spec

    def container(self) -> dict[str, Any]:
        containers = self.pod_spec()["containers"]
        assert len(containers) == 1
        container = containers[0]
        assert isinstance(container, dict)
        return container


class Helm:
    """Renders and lints the chart in the worker process; renders are cached by their values."""

    def __init__(self, pool: ProcessPoolExecutor) -> None:
        self.pool = pool
        self.cache: dict[str, tuple[dict[str, str], str]] = {}

    def _render(self, values: dict[str, Any]) -> tuple[dict[str, str], str]:
        key = json.dumps(values, sort_keys=True)
        if key not in self.cache:
            self.cache[key] = self.pool.submit(_worker_render, key).result(timeout=120)
        return self.cache[key]

    def render(self, values: dict[str, Any]) -> Rendered:
        manifests, error = self._render(values)
        assert not error, error
        objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith(".yaml"):
                objects += [doc for doc in yaml.safe_load_all(text) if doc]
        notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
        return Rendered(tuple(objects), notes)

    def render_error(self, values: dict[str, Any]) -> str:
        manifests, error = self._render(values)
        assert error, f"rendered without error: {sorted(manifests)}"
        return error

    def lint(self, values: dict[str, Any], kube_version: str) -> dict[str, Any]:
        return self.pool.submit(_worker_lint, json.dumps(values), kube_version).result(timeout=120)


@pytest.fixture(scope="module")
def helm(_packages: None) -> Iterator[Helm]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield Helm(pool)


def kube_version(version: str) -> str:
    """MAJOR.MINOR; "latest" is the newest Kubernetes the installed kubernetes-validate knows."""
    return str(kv.major_minor(kv.latest_version())) if version == "latest" else version


def merged(*values: dict[str, Any]) -> dict[str, Any]:
    """Deep merge, later wins (as helm does with several -f files)."""
    out: dict[str, Any] = {}
    for v in values:
        for key, value in v.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


# --- helm lint, and the manifests against the Kubernetes API ------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_helm_lint_strict_is_clean(helm: Helm, values_name: str, version: str) -> None:
    report = helm.lint(VALUE_SETS[values_name], f"v{kube_version(version)}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, json.dumps(report, indent=1)


MONITOR_ENDPOINT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port", "path", "interval"],
    "properties": {
        "port": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                     "(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"},
        "honorLabels": {"type": "boolean"},
        "tlsConfig": {"type": "object"},
        "relabelings": {"type": "array", "items": {"type": "object"}},
        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
    },
}


def monitor_schema(kind: str, endpoints: str) -> dict[str, Any]:
    """The part of the Prometheus Operator's ServiceMonitor/PodMonitor CRD schema the chart uses."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": MONITORING},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", endpoints],
                "properties": {
                    "selector": {
                        "type": "object", "additionalProperties": False, "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"},
                                                       "minProperties": 1}},
                    },
                    "namespaceSelector": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    endpoints: {"type": "array", "minItems": 1, "items": MONITOR_ENDPOINT},
                },
            },
        },
    }


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_rendered_objects_validate_strictly(helm: Helm, values_name: str, version: str) -> None:
    rendered = helm.render(VALUE_SETS[values_name])
    checked: list[str] = []
    for obj in rendered.objects:
        if obj["apiVersion"] == MONITORING:
            endpoints = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}[obj["kind"]]
            jsonschema.Draft7Validator(monitor_schema(obj["kind"], endpoints)).validate(obj)
            for endpoint in obj["spec"][endpoints]:
                if "scrapeTimeout" in endpoint:  # Prometheus refuses a timeout longer than the interval
                    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])
        else:
            problem = ""
            try:
                kv.validate(obj, kube_version(version), strict=True)
            except kv.ValidationError as exc:
                problem = (f"{obj['kind']}/{obj['metadata']['name']} is not a valid Kubernetes {exc.version} "
                           f"object: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                problem = exc.message
            assert not problem, problem
        checked.append(obj["kind"])
    assert {"ConfigMap", "DaemonSet"} <= set(checked)


def test_every_value_set_renders_the_objects_it_asks_for(helm: Helm) -> None:
    assert helm.render({}).kinds() == {"ConfigMap", "DaemonSet", "Service", "ServiceAccount"}
    assert helm.render(FULL_VALUES).kinds() == {"ConfigMap", "DaemonSet", "Service", "ServiceAccount",
                                                "ServiceMonitor", "PodMonitor"}
    assert helm.render(NODE_VALUES).kinds() == {"ConfigMap", "DaemonSet", "PodMonitor"}
    assert helm.render({}).hook_kinds() == {"ConfigMap", "Job"}
    assert helm.render({"cleanupJob": {"enabled": False}}).hook_kinds() == set()


# --- the DaemonSet --------------------------------------------------------------------------------

def volume_mount(rendered: Rendered, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume called ``name`` and its mount in the container."""
    volumes = [v for v in rendered.pod_spec()["volumes"] if v["name"] == name]
    mounts = [m for m in rendered.container()["volumeMounts"] if m["name"] == name]
    assert len(volumes) == 1 and len(mounts) == 1, f"volume {name}: {volumes} {mounts}"
    return volumes[0], mounts[0]


def test_daemonset_has_what_tracefs_and_uprobes_need(helm: Helm) -> None:
    rendered = helm.render({})
    ds = rendered.get("DaemonSet")
    pod = rendered.pod_spec()
    container = rendered.container()
    assert pod["hostPID"] is True
    assert "hostNetwork" not in pod and "hostIPC" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == FULLNAME == rendered.get("ServiceAccount")["metadata"]["name"]
    assert rendered.get("ServiceAccount")["automountServiceAccountToken"] is False

    tracefs, tracefs_mount = volume_mount(rendered, "tracefs")
    assert tracefs["hostPath"] == {"path": "/sys/kernel/tracing", "type": "Directory"}
    assert tracefs_mount["mountPath"] == "/sys/kernel/tracing"
    assert not tracefs_mount.get("readOnly", False)
    host, host_mount = volume_mount(rendered, "host-root")
    assert host["hostPath"] == {"path": "/", "type": "Directory"}
    assert host_mount["mountPath"] == "/host"
    assert host_mount["readOnly"] is True
    config, config_mount = volume_mount(rendered, "config")
    assert config["configMap"]["name"] == rendered.get("ConfigMap")["metadata"]["name"] == FULLNAME
    assert config_mount["readOnly"] is True
    assert f"{config_mount['mountPath']}/config.toml" == CONFIG_PATH
    # The kubelet's log layout, read-only, inside host_root where the exporter reads pods_dir.
    for name, path in (("pod-logs", "/var/log/pods"), ("container-logs", "/var/log/containers")):
        volume, mount = volume_mount(rendered, name)
        assert volume["hostPath"] == {"path": path, "type": "Directory"}
        assert mount["mountPath"] == f"/host{path}" and mount["readOnly"] is True
    assert parse_config(rendered.config()).exporter.pods_dir == "/var/log/pods"
    # Every hostPath is one of those above: nothing else of the node is reachable.
    assert [v["name"] for v in pod["volumes"] if "hostPath" in v] == ["tracefs", "host-root", "pod-logs",
                                                                       "container-logs"]

    assert container["command"] + container["args"] == [PROG, "run", "--config", CONFIG_PATH]
    args = _parser().parse_args(container["args"])
    assert (args.command, args.config) == ("run", CONFIG_PATH)
    assert container["image"] == f"uprobe-exporter:{__version__}"

    assert container["securityContext"] == {"privileged": True, "runAsUser": 0, "runAsGroup": 0,
                                            "runAsNonRoot": False, "readOnlyRootFilesystem": True}
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "priorityClassName" not in pod
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    # The stop needs ≈60 ms per event: 10 s + 100 ms per event (test_grace_period_follows_the_events).
    assert pod["terminationGracePeriodSeconds"] == 10 + -(-events_of(rendered) // 10)
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def events_of(rendered: Rendered) -> int:
    """Kernel events of the rendered configuration: one per probe, two with return = true."""
    return sum(2 if p.get("return") else 1 for p in rendered.config()["probes"])


MANY_PROBES = [{"name": f"f{i}", "binary": "/usr/local/bin/app", "function": f"f{i}", "return": True}
               for i in range(150)]


@pytest.mark.parametrize(("values", "grace", "budget"), [
    ({}, None, None),
    ({"config": {"probes": MANY_PROBES}}, 40, 37),
    ({"config": {"probes": [*MANY_PROBES[:3], {**MANY_PROBES[3], "return": False}]}}, 11, 8),
    ({"config": {"probes": MANY_PROBES}, "terminationGracePeriodSeconds": 90}, 90, 87),
    ({"config": {"probes": MANY_PROBES, "exporter": {"stop_budget_seconds": 60}}}, 63, 60),
    ({"config": {"probes": MANY_PROBES, "exporter": {"stop_budget_seconds": 12.5}}}, 40, 12.5),
])
def test_grace_period_follows_the_events(helm: Helm, values: dict[str, Any], grace: int | None,
                                         budget: float | None) -> None:
    """The kubelet's grace period covers the exporter's stop (≈60 ms per event on Linux 6.18), and the
    exporter's stop budget fits in it."""
    rendered = helm.render(values)
    events = events_of(rendered)
    pod_grace = rendered.pod_spec()["terminationGracePeriodSeconds"]
    stop_budget = rendered.config()["exporter"]["stop_budget_seconds"]
    if grace is None:
        grace, budget = 10 + -(-events // 10), 10 + -(-events // 10) - 3
    assert (pod_grace, stop_budget) == (grace, budget)
    assert pod_grace >= stop_budget + 3
    assert parse_config(rendered.config()).exporter.stop_budget_seconds == budget
    assert pod_grace >= events * 0.06 * 1.25 + 2, "room for the stop the exporter itself estimates"


def test_cleanup_job_runs_cleanup_on_every_node_after_uninstall(helm: Helm) -> None:
    rendered = helm.render({"cleanupJob": {"nodes": 5}, "config": {"exporter": {"group": "g1", "instance": "i1"}}})
    job, config_map = rendered.hook("Job"), rendered.hook("ConfigMap")
    for obj in (job, config_map):
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-delete"
        assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {"before-hook-creation", "hook-succeeded"}
    assert int(config_map["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 5
    pod = job["spec"]["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert anti[0]["labelSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    args = _parser().parse_args(container["args"])
    assert args.command == "cleanup" and args.config == CONFIG_PATH
    grace = rendered.pod_spec()["terminationGracePeriodSeconds"]
    assert args.wait > grace, "waits for an exporter still stopping on its node"
    assert pod["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    assert {"name": "tracefs", "hostPath": {"path": "/sys/kernel/tracing", "type": "Directory"}} in pod["volumes"]
    assert "serviceAccountName" not in pod and pod["automountServiceAccountToken"] is False
    assert pod["tolerations"] == rendered.pod_spec()["tolerations"]
    assert container["securityContext"] == rendered.container()["securityContext"]
    config = tomllib.loads(config_map["data"]["config.toml"])
    assert config == {"exporter": {"tracefs": "/sys/kernel/tracing", "group": "g1", "instance": "i1",
                                   "log_level": "info"}}
    assert helm.render({}).hook("Job")["spec"]["completions"] == 1, "no cluster to look the nodes up in"


def test_capabilities_profile_drops_everything_but_what_it_adds(helm: Helm) -> None:
    rendered = helm.render(FULL_VALUES)
    sc = rendered.container()["securityContext"]
    assert sc == {
        "privileged": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": ["SYS_PTRACE"]},
        "appArmorProfile": {"type": "Unconfined"},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    no_ptrace = helm.render(merged(FULL_VALUES, {"securityContext": {"capabilities": {"add": []}}}))
    assert no_ptrace.container()["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    selinux = helm.render(merged(FULL_VALUES, {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}))
    assert selinux.container()["securityContext"]["seLinuxOptions"] == {"type": "spc_t"}
    assert "capabilities" in rendered.notes and "SYS_PTRACE" in rendered.notes


def test_custom_values_reach_the_pod(helm: Helm) -> None:
    rendered = helm.render(FULL_VALUES)
    pod, container = rendered.pod_spec(), rendered.container()
    assert container["resources"] == FULL_VALUES["resources"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert container["env"] == [{"name": "TZ", "value": "UTC"}]
    metadata = rendered.get("DaemonSet")["spec"]["template"]["metadata"]
    assert metadata["annotations"]["example.com/team"] == "observability"
    assert metadata["labels"]["team"] == "observability"


def test_node_paths_follow_the_values(helm: Helm) -> None:
    rendered = helm.render(NODE_VALUES)
    tracefs, mount = volume_mount(rendered, "tracefs")
    assert tracefs["hostPath"]["path"] == mount["mountPath"] == "/sys/kernel/debug/tracing"
    assert "host-root" not in {v["name"] for v in rendered.pod_spec()["volumes"]}
    config = parse_config(rendered.config())
    assert (config.exporter.tracefs, config.exporter.host_root) == ("/sys/kernel/debug/tracing", "/")
    assert config.exporter.pods_dir == "/var/log/k8s/pods"  # no host root: mounted where it is read
    for name, path in (("pod-logs", "/var/log/k8s/pods"), ("container-logs", "/var/log/k8s/containers")):
        volume, mount = volume_mount(rendered, name)
        assert volume["hostPath"]["path"] == mount["mountPath"] == path and mount["readOnly"] is True
    no_logs = helm.render(merged(NODE_VALUES, {"podLogs": {"enabled": False}}))
    assert {"pod-logs", "container-logs"}.isdisjoint(v["name"] for v in no_logs.pod_spec()["volumes"])
    assert rendered.pod_spec()["serviceAccountName"] == "default"


# --- the rendered configuration -------------------------------------------------------------------

@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_config_toml_is_accepted_by_the_exporter(helm: Helm, values_name: str) -> None:
    rendered = helm.render(VALUE_SETS[values_name])
    config = parse_config(rendered.config(), source="config.toml")  # raises ConfigError on any problem
    host_root = "/" if values_name == "node" else "/host"
    assert config.exporter.host_root == host_root
    assert config.exporter.tracefs == volume_mount(rendered, "tracefs")[1]["mountPath"]
    assert (config.jsonl.enabled, config.jsonl.path) == (True, "-")  # stdout, for the log pipeline
    assert config.metrics.enabled


def test_default_config_is_the_built_in_example(helm: Helm) -> None:
    rendered = helm.render({}).config()
    example = tomllib.loads(example_text())
    assert rendered["probes"] == example["probes"]
    assert rendered["output"] == example["output"]
    assert rendered["metrics"] == example["metrics"]
    # The same exporter settings, but for the paths of the chart's mounts and the stop budget (from
    # the grace period the chart renders).
    exporter = parse_config(example).exporter
    grace = helm.render({}).pod_spec()["terminationGracePeriodSeconds"]
    assert parse_config(rendered).exporter == dataclasses.replace(
        exporter, tracefs="/sys/kernel/tracing", host_root="/host", stop_budget_seconds=grace - 3)


def test_custom_probes_render_to_the_same_toml_values(helm: Helm) -> None:
    config = helm.render(FULL_VALUES).config()
    assert config["probes"] == CUSTOM_PROBES
    assert isinstance(config["probes"][1]["offset"], int)  # 4425, not 4425.0
    assert config["exporter"]["buffer_size_kb"] == 8192 and isinstance(config["exporter"]["buffer_size_kb"], int)
    assert config["exporter"]["log_level"] == "debug"
    assert config["metrics"] == {"listen": ":9600", "label_values_max": 50}
    probes = parse_config(config).probes
    assert [p.name for p in probes] == ["nginx_request", "worker_step", "malloc_calls", "shop_nginx", "ssl_write"]
    assert probes[3].discover == DiscoverConfig("nginx", "shop", "web-*", "nginx") and not probes[3].binary
    assert probes[4].discover == DiscoverConfig("*") and probes[4].binary == "libssl.so.3"


def test_toml_strings_numbers_and_tables_survive_any_content(helm: Helm) -> None:
    tricky = {
        "name": "tricky", "binary": "/opt/my app/bin/ünïcode tool", "function": "do_work",
        "args": {"s": "+0(%di):string", "x": "%si:x64"},
        "filter": 'comm == "ba\\sh" && s ~ "*\'quoted\'*"\t# not a comment\n[not] = a table \x7f \u2028 <&>',
        "return": True, "latency": True,
        "buckets": [1e-7, 0.00001, 0.5, 1, 2.5, 1000000],
        "labels": ["s", "comm"],
    }
    config = helm.render({"config": {"probes": [tricky]}}).config()
    assert config["probes"] == [tricky]
    assert parse_config(config).probes[0].buckets == (1e-7, 0.00001, 0.5, 1.0, 2.5, 1000000.0)


def checksum(rendered: Rendered) -> str:
    value = rendered.get("DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value)
    return value


def test_checksum_annotation_rolls_the_daemonset_on_config_changes_only(helm: Helm) -> None:
    base = helm.render({})
    probes = copy.deepcopy(base.config()["probes"])
    probes[0]["args"]["prompt"] = "+0(%di):ustring"
    changed = helm.render({"config": {"probes": probes}})
    assert changed.config()["probes"][0]["args"]["prompt"] == "+0(%di):ustring"
    assert checksum(changed) != checksum(base)
    assert checksum(helm.render({"config": {"exporter": {"log_level": "debug"}}})) != checksum(base)
    # Not a config change: the pods are left alone.
    assert checksum(helm.render({"resources": {"limits": {"memory": "1Gi"}}})) == checksum(base)
    # The checksum is the ConfigMap's, as rendered.
    assert checksum(base) != hashlib.sha256(b"").hexdigest()


# --- ports: the exporter's listen address, the container, the probes, the Service, the monitors ---

@pytest.mark.parametrize(("values_name", "port"), [("default", DEFAULT_PORT), ("full", 9600)])
def test_ports_and_paths_agree_with_the_metrics_listen_address(helm: Helm, values_name: str, port: int) -> None:
    rendered = helm.render(VALUE_SETS[values_name])
    assert parse_config(rendered.config()).metrics.port == port
    container = rendered.container()
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics", "scheme": "HTTP"}
    service = rendered.get("Service")
    assert service["spec"]["type"] == "ClusterIP"
    service_port = VALUE_SETS[values_name].get("service", {}).get("port", port)
    assert service["spec"]["ports"] == [{"name": "metrics", "port": service_port, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    pod_labels = rendered.get("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert f":{port}/metrics" in rendered.notes


def test_monitors_scrape_the_metrics_port(helm: Helm) -> None:
    rendered = helm.render(FULL_VALUES)
    service = rendered.get("Service")
    pod_labels = rendered.get("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    sm = rendered.get("ServiceMonitor")
    assert sm["apiVersion"] == MONITORING
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "scheme": "http",
                                        "interval": "15s", "scrapeTimeout": "10s"}]
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    pm = rendered.get("PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "scheme": "http",
                                                  "interval": "20s"}]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [p["name"] for p in rendered.container()["ports"]] == ["metrics"]
    assert "scraped twice" in rendered.notes  # both on: the NOTES say so


def test_tls_switches_probes_and_monitors_to_https(helm: Helm) -> None:
    rendered = helm.render(TLS_VALUES)
    container = rendered.container()
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert rendered.get("ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"
    assert rendered.get("ServiceMonitor")["spec"]["endpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}
    assert {"name": "tls", "mountPath": "/etc/uprobe-exporter/tls", "readOnly": True} in container["volumeMounts"]
    client_ca = merged(TLS_VALUES, {"config": {"metrics": {"tls_client_ca_file": "/etc/uprobe-exporter/tls/ca.crt"}}})
    # The kubelet has no client certificate: a TCP check instead of GET /metrics.
    assert helm.render(client_ca).container()["readinessProbe"]["tcpSocket"] == {"port": "metrics"}


# --- bad values fail early --------------------------------------------------------------------------

BAD_PROBE = {"name": "ok", "binary": "/bin/true", "function": "main"}
BAD_VALUES: dict[str, dict[str, Any]] = {
    "probe name with a dash": {"config": {"probes": [{**BAD_PROBE, "name": "bad-name"}]}},
    "probe name with capitals": {"config": {"probes": [{**BAD_PROBE, "name": "Readline"}]}},
    "function and offset": {"config": {"probes": [{**BAD_PROBE, "offset": 16}]}},
    "neither function nor offset": {"config": {"probes": [{"name": "ok", "binary": "/bin/true"}]}},
    "no binary": {"config": {"probes": [{"name": "ok", "function": "main"}]}},
    "discover without exe": {"config": {"probes": [{"name": "ok", "function": "main", "discover": {"pod": "x"}}]}},
    "unknown discover key": {"config": {"probes": [{**BAD_PROBE, "discover": {"exe": "x", "image": "y"}}]}},
    "pods_dir set in config": {"config": {"exporter": {"pods_dir": "/var/log/pods"}}},
    "pod log path with a trailing slash": {"podLogs": {"enabled": True, "path": "/var/log/pods/"}},
    "args not strings": {"config": {"probes": [{**BAD_PROBE, "args": {"n": 3}}]}},
    "arg name not an identifier": {"config": {"probes": [{**BAD_PROBE, "args": {"a-b": "%di"}}]}},
    "return not a boolean": {"config": {"probes": [{**BAD_PROBE, "return": "yes"}]}},
    "latency without return": {"config": {"probes": [{**BAD_PROBE, "latency": True}]}},
    "negative bucket": {"config": {"probes": [{**BAD_PROBE, "buckets": [-1, 1]}]}},
    "labels not strings": {"config": {"probes": [{**BAD_PROBE, "labels": [1]}]}},
    "unknown probe key": {"config": {"probes": [{**BAD_PROBE, "functon": "main"}]}},
    "no probes": {"config": {"probes": []}},
    "tracefs set in config": {"config": {"exporter": {"tracefs": "auto"}}},
    "host_root set in config": {"config": {"exporter": {"host_root": "/"}}},
    "unknown security mode": {"securityContext": {"mode": "root"}},
    "listen without a port": {"config": {"metrics": {"listen": "0.0.0.0"}}},
    "metrics off": {"config": {"metrics": {"enabled": False}}},
    "bad monitor interval": {"serviceMonitor": {"enabled": True, "interval": "often"}},
    "unknown top-level value": {"imag": {"tag": "1"}},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(helm: Helm, case: str) -> None:
    values = BAD_VALUES[case]
    report = helm.lint(values, "v1.33.0")
    assert report["errors"], f"helm lint accepted {case}: {json.dumps(report)}"
    assert "HelmValuesError" in helm.render_error(values)


def test_loopback_listen_address_fails_the_render(helm: Helm) -> None:
    error = helm.render_error({"config": {"metrics": {"listen": "127.0.0.1:9527"}}})
    assert "loopback" in error


# --- the container image ------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of helm/Dockerfile, continuation lines joined, comments dropped."""
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "")
            for line in logical.splitlines() if (parts := line.strip().split(None, 1))]


def test_dockerfile_runs_the_cli_the_chart_runs(helm: Helm) -> None:
    instructions = dockerfile_instructions()
    final_stage = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]

    def last(op: str) -> str:
        return [args for name, args in final_stage if name == op][-1]

    entrypoint, cmd = json.loads(last("ENTRYPOINT")), json.loads(last("CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert entrypoint == [PROG] and scripts[PROG] == "uprobe_exporter.cli:main"
    args = _parser().parse_args(cmd)
    assert (args.command, args.config) == ("run", CONFIG_PATH)
    container = helm.render({}).container()
    assert entrypoint + cmd == container["command"] + container["args"]
    assert last("EXPOSE") == str(DEFAULT_PORT)
    assert last("USER") == "root"  # uprobes need uid 0: the comment in the Dockerfile says why
    # Debian's own python3 on Debian's slim base; the compiler stays in the build stage.
    assert instructions[0] == ("ARG", "BASE_IMAGE=debian:bookworm-slim")
    assert [args for op, args in instructions if op == "FROM"] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    installs = [args for op, args in final_stage if op == "RUN" and "apt-get install" in args]
    assert len(installs) == 1 and re.search(r"--no-install-recommends python3\s+&&", installs[0]), installs
    assert any("pip install --no-cache-dir ." in args for op, args in instructions if op == "RUN")
    assert "PYTHONDONTWRITEBYTECODE=1" in last("ENV")  # the root file system is read-only in the pod
    assert 'org.opencontainers.image.version="${VERSION}"' in last("LABEL")
    assert f"ARG VERSION={__version__}" in DOCKERFILE.read_text(encoding="utf-8")
    # What it copies exists at the root of the build context.
    for op, operands in instructions:
        if op == "COPY" and "--from" not in operands:
            for source in shlex.split(operands)[:-1]:
                if not source.startswith("--"):
                    assert (ROOT / source).exists(), source


def test_chart_versions_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == __version__
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(values)


# --- the systemd unit ---------------------------------------------------------------------------------

class UnitParser(configparser.ConfigParser):
    """A systemd unit file: keys keep their case; a repeated key keeps its last value."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def test_systemd_unit_runs_the_exporter_hardened_but_able_to_write_tracefs() -> None:
    unit = UnitParser(strict=False, interpolation=None, comment_prefixes=("#", ";"), empty_lines_in_values=False)
    unit.read_string(UNIT.read_text(encoding="utf-8"))
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    binary, *argv = shlex.split(service["ExecStart"])
    assert binary == f"/opt/uprobe-exporter/bin/{PROG}"
    assert "PREFIX=${1:-/opt/uprobe-exporter}" in (HELM / "install.sh").read_text(encoding="utf-8")  # it goes there
    args = _parser().parse_args(argv)
    assert (args.command, args.config) == ("run", CONFIG_PATH)
    expected = {
        "User": "root", "Restart": "on-failure", "KillSignal": "SIGTERM", "TimeoutStopSec": "35",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes", "RestrictRealtime": "yes", "SystemCallArchitectures": "native",
    }
    assert {key: service.get(key) for key in expected} == expected
    # The stop needs ≈60 ms per event: the unit's timeout must exceed the exporter's default stop budget.
    assert int(service["TimeoutStopSec"]) >= ExporterConfig().stop_budget_seconds + 5
    assert "/sys/kernel/tracing" in service["ReadWritePaths"].split()
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # uid 0 passes tracefs's file-mode checks without capabilities; ptrace-read for /proc/<pid>/root.
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    # These would make tracefs read-only, hide other processes, or make root a stranger to tracefs.
    assert service.get("ProtectKernelTunables", "no") == "no"
    assert service.get("ProtectProc", "default") == "default"
    assert service.get("PrivateUsers", "no") == "no"
    assert "/sys/kernel/tracing" in unit["Unit"]["RequiresMountsFor"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
