#!/usr/bin/env bash
# Build the Docker base image `clip-base:bookworm` without a registry: debootstrap a Debian
# bookworm root file system (python3.11, as the project and its bentofiles pin) and
# `docker import` it. deploy/container/bentofile.offline.yaml builds FROM it.
#
#   sudo deploy/container/base-image.sh            # no-op when the image exists
#   REBUILD=1 sudo deploy/container/base-image.sh  # rebuild it
#
# Needs root, debootstrap, a running Docker daemon and a Debian mirror (MIRROR). The image
# carries what BentoML's generated Dockerfile would otherwise install or download:
# ca-certificates gnupg2 bash build-essential git (its `apt-get install` becomes a no-op),
# python3.11 with venv, and a `uv` binary on PATH (UV, default: the `uv` on this PATH).
# EXTRA_CA_CERTS (space-separated .crt files) are added to its trust store, for a network whose
# HTTPS goes through an intercepting proxy; the image then sets SSL_CERT_FILE so that uv (which
# otherwise trusts only its built-in roots) uses that store.
set -euo pipefail

IMAGE=${BASE_IMAGE:-clip-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/tmp/clip-base-rootfs}
UV=${UV:-$(command -v uv || true)}
EXTRA_CA_CERTS=${EXTRA_CA_CERTS:-}

say() { printf '[base-image] %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

if [[ -z ${REBUILD:-} ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE exists ($(docker image inspect -f '{{.Id}}' "$IMAGE")); REBUILD=1 to remake it"
    exit 0
fi
[[ $(id -u) == 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
[[ -n $UV && -x $UV ]] || die "no uv binary: set UV=/path/to/uv (pip install uv)"

rootfs="$WORK/$SUITE"
rm -rf "$rootfs"
mkdir -p "$WORK"
say "debootstrap $SUITE from $MIRROR into $rootfs (a few minutes)"
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,gnupg2,bash,build-essential,git \
    "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $WORK/debootstrap.log"
chroot "$rootfs" python3 --version | grep -q '^Python 3\.11\.' \
    || die "$SUITE's python3 is not 3.11: $(chroot "$rootfs" python3 --version)"
install -m 0755 "$UV" "$rootfs/usr/local/bin/uv"
chroot "$rootfs" /usr/local/bin/uv --version >/dev/null || die "uv does not run in the rootfs"
for crt in $EXTRA_CA_CERTS; do
    say "trusting $crt"
    install -m 0644 "$crt" "$rootfs/usr/local/share/ca-certificates/$(basename "$crt")"
done
chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates"
# The host's resolver is no business of the image (Docker writes its own at run time).
: >"$rootfs/etc/resolv.conf"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin

say "docker import -> $IMAGE"
# An imported image has no config: give it PATH, or the generated Dockerfile's
# `ENV PATH=/app/.venv/bin:${PATH}` would drop /usr/bin.
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $SUITE + uv" - "$IMAGE" >/dev/null
rm -rf "$rootfs"
say "built $IMAGE: $(docker image inspect -f '{{.Id}} {{.Size}} bytes' "$IMAGE")"
