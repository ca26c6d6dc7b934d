"""The container image, built with podman by helm/build-image.sh and run as the Helm chart runs the pod.

Strategy: the chart is rendered (Helm's own engine, as in test_helm.py) for each of its security
profiles, and the rendered pod spec is translated, field by field, into ``podman run`` options the way
the kubelet applies them: the container's securityContext (privileged, user, capabilities, read-only
root file system, no-new-privileges, seccomp), hostPID, the hostPath volumes with their readOnly and
mountPropagation, the ConfigMap volume (in the kubelet's ``..data`` layout), the memory limit, the
metrics port. A field the translation does not know fails the test rather than being skipped. podman
runs in a mount namespace of its own whose / is shared (the node, as systemd sets it up), so mount
propagation into the container can be seen. The container's exporter records a C target running on
the host; its stdout (the pod's log) must hold every call, ``/metrics`` (from the host, through the
published port) every hit, and SIGTERM (what the kubelet sends) must stop it within the chart's grace
period with nothing left in the host's tracefs.

podman runs containers with runc; the VM lacks CAP_SYS_RESOURCE, so podman's default ulimits are
switched off (containers.conf). The base image is made from the Debian mirror when no registry answers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_helm import Helm, Rendered, volume_mount
from tests.helpers import ROOT, ExporterProcess, read_jsonl, wait_for_lines
from tests.kernel.test_metrics import wait_scrape
from tests.kernel.test_records import WORK, check_work_records
from tests.prom import free_port
from uprobe_exporter import __version__
from uprobe_exporter.kernel.tracefs import Tracefs

pytestmark = pytest.mark.kernel

BUILD_SCRIPT = ROOT / "helm" / "build-image.sh"
SCHEMA = ROOT / "helm" / "uprobe-exporter" / "values.schema.json"
THREADS, CALLS = 4, 50
BUILD_TIMEOUT = 1200  # debootstrap of the base (first time only) and the two-stage build, on a busy VM
NATIVE_LOG = re.compile(r"raw reader: native path for (\d+) of (\d+) events; "
                        r"native parts: active \(/opt/uprobe-exporter/")


def security_modes() -> list[str]:
    """The chart's security profiles: every value values.schema.json allows for securityContext.mode."""
    modes = json.loads(SCHEMA.read_text(encoding="utf-8"))["properties"]["securityContext"]["properties"]["mode"]
    return list(modes["enum"])


# Each profile as the chart renders it; "capabilities" also with no capability at all (what the
# chart's comments say suffices for binaries under hostRoot: uid 0 alone passes tracefs's checks).
PROFILES: dict[str, dict[str, Any]] = {mode: {"mode": mode} for mode in security_modes()}
PROFILES["capabilities-none"] = {"mode": "capabilities", "capabilities": {"add": []}}


@dataclass(frozen=True, slots=True)
class Podman:
    """The podman command line with this machine's containers.conf."""

    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)
        assert done.returncode == 0 or not check, f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done


@dataclass(frozen=True, slots=True)
class Image:
    tag: str
    build_seconds: float
    size_bytes: int


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, tracefs: Tracefs) -> Podman:
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is not installed (.ci/run installs podman runc debootstrap)"
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    # podman sets RLIMIT_NOFILE/NPROC above the current limits by default: that needs CAP_SYS_RESOURCE.
    conf.write_text("[containers]\ndefault_ulimits = []\n", encoding="utf-8")
    return Podman({**os.environ, "CONTAINERS_CONF": str(conf)})


@pytest.fixture(scope="module")
def image(podman: Podman) -> Iterator[Image]:
    """The image, built by helm/build-image.sh (no layer cache: nothing but the tagged image is left)."""
    tag = f"localhost/uprobe-exporter:test-{os.getpid()}"
    start = time.monotonic()
    done = subprocess.run([str(BUILD_SCRIPT), tag], capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                          env={**podman.env, "BUILD_ARGS": "--layers=false"}, check=False)
    seconds = time.monotonic() - start
    try:
        assert done.returncode == 0, f"build-image.sh failed ({done.returncode}):\n{done.stderr[-4000:]}"
        size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
        print(f"\nimage {tag}: built in {seconds:.0f} s, {size / 1e6:.0f} MB")  # shown with pytest -s
        yield Image(tag, seconds, size)
    finally:
        podman("rmi", "--force", tag, check=False)


@pytest.fixture(scope="module")
def helm() -> Iterator[Helm]:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield Helm(pool)


# --- the image itself -------------------------------------------------------------------------------

def test_image_is_debian_python_with_the_native_path_and_nothing_of_the_build(image: Image, podman: Podman) -> None:
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image.tag).stdout)
    assert labels["org.opencontainers.image.title"] == "uprobe-exporter"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.base.name"] == "debian:bookworm-slim"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    script = """
        set -e
        /usr/bin/python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
        test "$(readlink -f "$(command -v python3)")" = /usr/bin/python3.11
        python3 -c 'import uprobe_exporter._native'
        for tool in gcc cc ld as pip pip3; do if command -v $tool; then exit 1; fi; done
        for path in /usr/include/python3.11 /home/builder /run/host-trust /etc/pip.conf \
                    /etc/ssl/certs/ca-certificates.crt; do
            if test -e $path; then echo "$path is in the image"; exit 1; fi
        done
        uprobe-exporter --version
    """
    done = podman("run", "--rm", "--network=none", "--entrypoint", "sh", image.tag, "-c", script, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    version = done.stdout.splitlines()
    assert version[0] == f"uprobe-exporter {__version__}", done.stdout
    assert any(re.fullmatch(r"Python 3\.11\.\d+ \(/opt/uprobe-exporter/bin/python3\)", line) for line in version)
    assert any(line.startswith("native path: active (/opt/uprobe-exporter/") for line in version), done.stdout
    assert image.size_bytes < 160e6, f"{image.size_bytes / 1e6:.0f} MB"


# --- the pod spec, as the kubelet runs it ---------------------------------------------------------------

POD_FIELDS = {"serviceAccountName", "automountServiceAccountToken", "hostPID", "terminationGracePeriodSeconds",
              "containers", "volumes", "nodeSelector", "tolerations", "affinity", "priorityClassName",
              "imagePullSecrets"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "ports", "env", "livenessProbe",
                    "readinessProbe", "resources", "securityContext", "volumeMounts"}
PROPAGATION = {None: "rprivate", "None": "rprivate", "HostToContainer": "rslave", "Bidirectional": "rshared"}


def security_options(sc: dict[str, Any]) -> list[str]:
    """podman options for a container securityContext; a field not handled here fails."""
    sc = dict(sc)
    opts: list[str] = []
    if sc.pop("privileged", False):
        opts.append("--privileged")
    uid, gid = sc.pop("runAsUser", None), sc.pop("runAsGroup", None)
    if uid is not None:
        opts.append(f"--user={uid}:{gid if gid is not None else 0}")
    assert not (sc.pop("runAsNonRoot", False) and uid == 0), "the kubelet refuses runAsNonRoot with uid 0"
    if sc.pop("readOnlyRootFilesystem", False):
        opts += ["--read-only", "--read-only-tmpfs=false"]  # the kubelet mounts no tmpfs on /tmp or /run
    if sc.pop("allowPrivilegeEscalation", True) is False:
        opts.append("--security-opt=no-new-privileges")
    caps = sc.pop("capabilities", {})
    opts += [f"--cap-drop={c.lower()}" for c in caps.pop("drop", [])]
    opts += [f"--cap-add={c}" for c in caps.pop("add", [])]
    assert not caps, f"capabilities fields not translated: {caps}"
    seccomp = sc.pop("seccompProfile", {"type": "RuntimeDefault"})
    assert seccomp["type"] in {"RuntimeDefault", "Unconfined"}, seccomp
    if seccomp["type"] == "Unconfined":
        opts.append("--security-opt=seccomp=unconfined")
    apparmor = sc.pop("appArmorProfile", {"type": "RuntimeDefault"})
    assert apparmor["type"] in {"RuntimeDefault", "Unconfined"}, apparmor
    if apparmor["type"] == "Unconfined":
        opts.append("--security-opt=apparmor=unconfined")
    for key, value in sc.pop("seLinuxOptions", {}).items():
        opts.append(f"--security-opt=label={key}:{value}")
    assert not sc, f"securityContext fields not translated: {sc}"
    return opts


def configmap_dir(data: dict[str, str], where: Path) -> Path:
    """A ConfigMap volume as the kubelet writes it: files in a timestamped directory, ``..data`` a
    symbolic link to it, and each key a symbolic link through ``..data``."""
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()) + uuid.uuid4().hex[:9]
    (where / stamp).mkdir(parents=True)
    for key, text in data.items():
        (where / stamp / key).write_text(text, encoding="utf-8")
        (where / key).symlink_to(f"..data/{key}")
    (where / "..data").symlink_to(stamp)
    return where


def pod_options(rendered: Rendered, workdir: Path, host_port: int) -> list[str]:
    """The rendered DaemonSet's pod, container and volumes as podman options (the kubelet's view)."""
    pod, container = rendered.pod_spec(), rendered.container()
    # What a container runtime does not see (scheduling, the kubelet's probes, the image pull), or
    # is translated below; a field beyond these fails until the translation knows it.
    assert set(pod) <= POD_FIELDS, set(pod) - POD_FIELDS
    assert set(container) <= CONTAINER_FIELDS, set(container) - CONTAINER_FIELDS
    opts = ["--pid=host"] if pod.get("hostPID") else []
    opts += security_options(container.get("securityContext", {}))
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        ro = ",ro" if mount.get("readOnly") else ""
        if "hostPath" in volume:
            source = volume["hostPath"]["path"]
            assert volume["hostPath"].get("type") != "Directory" or Path(source).is_dir(), source
            propagation = PROPAGATION[mount.get("mountPropagation")]
            opts.append(f"--mount=type=bind,src={source},dst={mount['mountPath']}{ro},bind-propagation={propagation}")
        elif "configMap" in volume:
            cm = rendered.get("ConfigMap")
            assert cm["metadata"]["name"] == volume["configMap"]["name"]
            source = str(configmap_dir(cm["data"], workdir / mount["name"]))
            opts.append(f"--mount=type=bind,src={source},dst={mount['mountPath']}{ro}")
        else:
            raise AssertionError(f"volume kind not translated: {volume}")
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        opts.append(f"--memory={limits['memory'].removesuffix('i').lower()}")
    if "cpu" in limits:
        opts.append(f"--cpus={limits['cpu']}")
    for env in container.get("env", []):
        opts.append(f"--env={env['name']}={env['value']}")
    opts += [f"--publish=127.0.0.1:{host_port}:{p['containerPort']}/{p['protocol'].lower()}"
             for p in container["ports"]]
    return [*opts, f"--entrypoint={json.dumps(container['command'])}"]


@dataclass
class Pod:
    """A running container of the DaemonSet's pod."""

    name: str
    exporter: ExporterProcess  # podman run, in the node's mount namespace
    stdout: Path
    port: int
    grace: float
    host_root: str  # where the chart mounts the node's /
    tracefs: str  # and the node's tracefs

    def node_mount(self, *args: str) -> None:
        """mount(8) in the node's mount namespace (the one podman runs in)."""
        subprocess.run(["nsenter", f"--mount=/proc/{self.exporter.proc.pid}/ns/mnt", *args], check=True, timeout=30)


def wait_exit(pod: Pod, timeout: float = 60) -> int:
    """The exit code of the pod's container, which must exit within ``timeout`` seconds."""
    try:
        rc = pod.exporter.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s:\n{pod.exporter.stderr}")
    pod.exporter.stop()  # collects stderr
    return rc


@pytest.fixture
def run_pod(image: Image, podman: Podman, helm: Helm, group: str, tmp_path: Path) -> Iterator[Callable[..., Pod]]:
    started: list[Pod] = []

    def start(security: dict[str, Any], probes: list[dict[str, Any]], **context: Any) -> Pod:
        """The pod of the chart rendered with these values; ``context`` overrides fields of the
        rendered container securityContext (what the chart does not let one set)."""
        # the kubelet's log layout (podLogs): this machine is no Kubernetes node, so a made-up one
        logs = tmp_path / "node-logs"
        for d in ("pods", "containers"):
            (logs / d).mkdir(parents=True, exist_ok=True)
        values = {"securityContext": security, "podLogs": {"enabled": True, "path": str(logs / "pods")},
                  "config": {"exporter": {"group": group, "instance": group, "buffer_size_kb": 1024},
                             "probes": probes}}
        rendered = helm.render(values)
        container = rendered.container()
        container["securityContext"].update(context)
        port = free_port()
        name = f"{group.replace('_', '-')}-{len(started)}"
        # The node: a mount namespace of its own whose / is shared, as systemd makes it on a node (the
        # kubelet's runtimes refuse HostToContainer propagation from a private mount; this VM's / is
        # private). A mount made there later must propagate into the container's host root.
        argv = ["unshare", "--mount", "--propagation=unchanged", "sh", "-c", 'mount --make-rshared / && exec "$@"',
                "node", "env", f"CONTAINERS_CONF={podman.env['CONTAINERS_CONF']}", "podman", "run", "--rm",
                f"--name={name}", *pod_options(rendered, tmp_path, port), image.tag, *container["args"]]
        stdout = tmp_path / "stdout.jsonl"  # the pod's log
        with stdout.open("wb") as log:
            exporter = ExporterProcess(Path(), argv=argv, stdout=log)
        grace = float(rendered.pod_spec()["terminationGracePeriodSeconds"])
        pod = Pod(name, exporter, stdout, port, grace, volume_mount(rendered, "host-root")[1]["mountPath"],
                  volume_mount(rendered, "tracefs")[1]["mountPath"])
        started.append(pod)
        return pod

    try:
        yield start
    finally:
        for pod in started:  # a test that failed half-way: SIGTERM, so the exporter removes its probes
            podman("stop", f"--time={pod.grace:.0f}", pod.name, check=False)
            podman("rm", "--force", "--time=0", pod.name, check=False)
            pod.exporter.stop()  # reaps podman run, closes its stderr


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_pod_records_every_call_of_a_host_target(profile: str, run_pod: Callable[..., Pod], podman: Podman,
                                                 build: Callable[..., Path], tracefs: Tracefs, group: str,
                                                 tmp_path: Path) -> None:
    binary = build("calls")
    pod = run_pod(PROFILES[profile], [{**WORK, "binary": str(binary)}])
    pod.exporter.wait_ready(timeout=60)
    native = NATIVE_LOG.search(pod.exporter.stderr)
    assert native and native[1] == native[2] == "2", pod.exporter.stderr  # work's entry and return
    # The container registered the probes in the host's tracefs, in its own group and instance.
    assert {e.event for e in tracefs.read_uprobe_events() if e.group == group} == {"work_entry", "work_return"}
    assert tracefs.instance(group).exists()

    # The node's / read-only in the container, with mounts made on the node later visible there.
    late = tmp_path / "mounted-later"
    late.mkdir()
    pod.node_mount("mount", "-t", "tmpfs", "uetest-later", str(late))
    try:
        pid = podman("inspect", "--format", "{{.State.Pid}}", pod.name).stdout.strip()
        mounts = {m.split()[4]: m.split() for m in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}
    finally:
        pod.node_mount("umount", str(late))
    assert "ro" in mounts[pod.host_root][5].split(","), mounts[pod.host_root]
    assert mounts[f"{pod.host_root}{late}"][-2] == "uetest-later"  # the tmpfs's source
    assert "rw" in mounts[pod.tracefs][5].split(",")

    done = subprocess.run([binary, str(THREADS), str(CALLS), "0"], capture_output=True, check=True, timeout=120)
    report = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(report) == THREADS * CALLS
    wait_for_lines(pod.stdout, 2 * THREADS * CALLS, timeout=30)
    scrape = wait_scrape(pod.port, lambda s: s.value("uprobe_events_total", probe="work") >= 2 * THREADS * CALLS)
    assert scrape.value("uprobe_events_total", probe="work", type="entry") == THREADS * CALLS
    assert scrape.value("uprobe_events_total", probe="work", type="return") == THREADS * CALLS
    for kind in ("entry", "return"):  # the kernel's own count (uprobe_profile), read through the tracefs mount
        assert scrape.value("uprobe_probe_hits_total", event=f"{group}/work_{kind}") == THREADS * CALLS
    assert scrape.value("uprobe_exporter_kernel_lost_events_total") == 0

    # SIGTERM, as the kubelet sends it; SIGKILL would follow after the grace period.
    start = time.monotonic()
    podman("kill", "--signal=TERM", pod.name)
    rc = wait_exit(pod, pod.grace)
    elapsed = time.monotonic() - start
    assert rc == 0, pod.exporter.stderr
    assert elapsed < pod.grace
    assert not [e for e in tracefs.read_uprobe_events() if e.group == group]
    assert not tracefs.instance(group).exists()

    # The pod's log: JSON lines only, every call and every return exactly once.
    records = read_jsonl(pod.stdout)
    assert len(records) == 2 * THREADS * CALLS
    check_work_records(records, report, group, binary)
    assert podman("container", "exists", pod.name, check=False).returncode == 1  # --rm: gone


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_binary_of_another_process_needs_sys_ptrace(profile: str, run_pod: Callable[..., Pod], podman: Podman,
                                                    build: Callable[..., Path], tracefs: Tracefs, group: str) -> None:
    """``/proc/<pid>/root/<path>`` of a process with capabilities the exporter lacks: the kernel's
    ptrace access check asks for CAP_SYS_PTRACE, which the capabilities profile adds for this."""
    binary = build("calls")
    security = PROFILES[profile]
    ptrace = security["mode"] == "privileged" or "SYS_PTRACE" in security.get("capabilities", {}).get(
        "add", ["SYS_PTRACE"])  # the chart's default capabilities.add
    holder = subprocess.Popen(["sleep", "120"])  # root with every capability, as other pods' processes may be
    try:
        pod = run_pod(security, [{**WORK, "binary": f"/proc/{holder.pid}/root{binary}"}])
        if not ptrace:
            assert wait_exit(pod) == 2, pod.exporter.stderr
            assert "another process's root needs CAP_SYS_PTRACE" in pod.exporter.stderr
            assert len(pod.exporter.stderr.splitlines()) == 1, pod.exporter.stderr
            assert not [e for e in tracefs.read_uprobe_events() if e.group == group]
            return
        pod.exporter.wait_ready(timeout=60)
        subprocess.run([binary, "1", "4", "0"], capture_output=True, check=True, timeout=60)
        wait_for_lines(pod.stdout, 8)
    finally:
        holder.kill()
        holder.wait()
    podman("kill", "--signal=TERM", pod.name)
    assert wait_exit(pod) == 0, pod.exporter.stderr
    assert [r["args"]["a"] for r in read_jsonl(pod.stdout) if r["type"] == "entry"] == [-7, -6, -5, -4]


def test_a_user_other_than_root_cannot_register_probes(run_pod: Callable[..., Pod], build: Callable[..., Path],
                                                       tracefs: Tracefs, group: str) -> None:
    """Why the chart runs uid 0: tracefs's files belong to root, in 0700 directories; without
    CAP_DAC_OVERRIDE another uid cannot even enter them. The exporter says so in one line."""
    pod = run_pod(PROFILES["capabilities"], [{**WORK, "binary": str(build("calls"))}],
                  runAsUser=65534, runAsGroup=65534, runAsNonRoot=True)
    assert wait_exit(pod) == 1, pod.exporter.stderr
    assert "needs root" in pod.exporter.stderr and len(pod.exporter.stderr.splitlines()) == 1, pod.exporter.stderr
    assert not [e for e in tracefs.read_uprobe_events() if e.group == group]
