#!/usr/bin/env bash
# Builds the uprobe-exporter container image (helm/Dockerfile) with podman, from the repository.
#
#   helm/build-image.sh [TAG]            TAG defaults to uprobe-exporter:<the package's version>
#
# 1. The base image (BASE_IMAGE, default debian:bookworm-slim). When podman has no image of that name
#    and cannot pull one (an air-gapped host, no registry), it is made from a Debian mirror:
#    `debootstrap --variant=minbase`, trimmed as Debian's -slim images are (no documentation, man
#    pages or locales), then `podman import`. Skipped when the image exists.
# 2. `podman build --network=host` of helm/Dockerfile. Behind a TLS-intercepting proxy, the host's
#    trust is lent to the build's pip step as build secrets (TRUST, below); nothing of it is in the image.
#
# Environment:
#   BASE_IMAGE   the base image (default debian:bookworm-slim)
#   SUITE        the Debian release debootstrap installs (default: bookworm)
#   MIRROR       the Debian mirror for debootstrap (default: the host's apt source, else deb.debian.org)
#   SECURITY_MIRROR  the base image's security archive (default: the host's, else MIRROR's
#                debian-security sibling; "none": none)
#   PULL         1 (default): try `podman pull BASE_IMAGE` before debootstrap; 0: do not ask a registry
#   TRUST        1 (default): lend the build's pip step the host's trust as build secrets: CA_BUNDLE
#                (default /etc/ssl/certs/ca-certificates.crt) and PIP_CONF (default /etc/pip.conf),
#                where they exist (helm/Dockerfile says how pip uses them); 0: do not
#   BUILD_ARGS   more arguments for `podman build` (e.g. "--layers=false")
# podman must be able to run containers here: on a host without CAP_SYS_RESOURCE point
# CONTAINERS_CONF at a containers.conf with `[containers] default_ulimits = []`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$root/uprobe_exporter/__init__.py")
tag=${1:-uprobe-exporter:$version}
base=${BASE_IMAGE:-debian:bookworm-slim}
suite=${SUITE:-bookworm}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
pip_conf=${PIP_CONF:-/etc/pip.conf}

log() { printf 'build-image: %s\n' "$*" >&2; }

host_uri() {
    # The first URI of the host's apt sources (deb822 or one-line format) whose being a security
    # archive is $1 (1 or 0).
    local security=$1 uri
    uri=$(awk -v want="$security" '/^URIs:/ && (($2 ~ /security/) == want) {print $2; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk -v want="$security" '$1 == "deb" && (($2 ~ /security/) == want) {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null || true)
    printf '%s\n' "$uri"
}

make_base() {
    local mirror security rootfs
    mirror=${MIRROR:-$(host_uri 0)}
    mirror=${mirror:-http://deb.debian.org/debian}
    security=${SECURITY_MIRROR:-}
    if [ -z "$security" ] && [ -z "${MIRROR:-}" ]; then security=$(host_uri 1); fi
    security=${security:-${mirror%/debian}/debian-security}
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 2; }
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/uprobe-exporter-base.XXXXXX")
    # Everything below writes under $rootfs: never let an empty one mean the host's own /etc.
    case "$rootfs" in /?*/uprobe-exporter-base.*) ;; *) log "bad rootfs '$rootfs'"; exit 1 ;; esac
    # --one-file-system: a failed debootstrap may leave /proc or /sys mounted inside.
    trap 'rm -rf --one-file-system "$rootfs" "$rootfs.log"' EXIT
    log "making $base: debootstrap --variant=minbase $suite from $mirror"
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
        || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    # What Debian's -slim images leave out, and keep out of later packages (dpkg path excludes).
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale,lintian,linda}/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # No recommended packages, no apt caches (as in Debian's images).
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"
    printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' \
        >"$rootfs/etc/apt/apt.conf.d/docker-clean"
    # The release, its updates and its security archive, from the mirror debootstrap used.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    [ "$security" = none ] || cat >>"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    : >"$rootfs/etc/hostname"
    tar --numeric-owner -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $suite $mirror" - "$base" >/dev/null
    rm -rf --one-file-system "$rootfs" "$rootfs.log"
    trap - EXIT
    log "made $base ($(podman image inspect --format '{{.Size}}' "$base" | awk '{printf "%.0f MB", $1 / 1e6}'))"
}

# Two builds at once must not both debootstrap: the base is made under a lock.
exec 9>"${TMPDIR:-/var/tmp}/uprobe-exporter-base.lock"
flock 9
if podman image exists "$base"; then
    log "base $base exists"
elif [ "${PULL:-1}" = 1 ] && podman pull -q "$base" >/dev/null 2>&1; then
    log "pulled $base"
else
    make_base
fi
flock -u 9

trust=()
if [ "${TRUST:-1}" = 1 ]; then
    if [ -f "$ca_bundle" ]; then trust+=(--secret "id=ca_bundle,src=$ca_bundle"); fi
    if [ -f "$pip_conf" ]; then trust+=(--secret "id=pip_conf,src=$pip_conf"); fi
fi
log "building $tag from $base"
# shellcheck disable=SC2086  # BUILD_ARGS is a list of words
podman build --network=host "${trust[@]}" --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
    ${BUILD_ARGS:-} --file "$here/Dockerfile" --ignorefile "$here/Dockerfile.dockerignore" --tag "$tag" "$root"
