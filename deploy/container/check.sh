#!/usr/bin/env bash
# End-to-end container check: build the Bento, `bentoml containerize` it, start the image with
# the project's generated tiny models mounted, wait for GET /readyz = 200, POST /vectorize a
# PNG and check the vector, then push the image to a local registry and read it back from the
# registry's API. Exits non-zero, with the reason, at the first failure. Safe to rerun: it
# reuses the base image, Docker's layer cache, a running daemon and a running registry.
#
#   sudo deploy/container/check.sh          # from anywhere; needs root for dockerd/debootstrap
#
# Needs (Debian): docker.io (dockerd), docker-registry, debootstrap, curl, and the project's
# venv (.venv, or PYTHON=/path/to/python with bentoml and the project installed). Settings
# (environment variables; defaults in brackets):
#   BENTOFILE   [deploy/container/bentofile.offline.yaml]  the Bento to containerize
#   BASE_IMAGE  [clip-base:bookworm]  built by deploy/container/base-image.sh when missing
#   EXTRA_CA_CERTS [/usr/local/share/ca-certificates/*.crt]  CAs the base image must trust
#   WORK        [build/container]  logs, BentoML home, tiny models, registry storage
#   PORT        [3300]  the container's port on 127.0.0.1 (it runs with --network host)
#   CLIP_MODEL  [hf-clip]  one of the tiny models: hf-clip, open-clip
#   CAPTION     [none]  none, or blip (then the label tables are built at start-up: slower)
#   REGISTRY    [127.0.0.1:5000]  started from Debian's docker-registry when not answering
#   READY_TIMEOUT_S [900]  how long the container may take to answer /readyz 200
#   KEEP        [unset]  set to leave the container running afterwards
set -euo pipefail

began=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=$(mkdir -p "${WORK:-$REPO/build/container}" && cd "${WORK:-$REPO/build/container}" && pwd)
BENTOFILE=${BENTOFILE:-deploy/container/bentofile.offline.yaml}
BASE_IMAGE=${BASE_IMAGE:-clip-base:bookworm}
PORT=${PORT:-3300}
CLIP_MODEL=${CLIP_MODEL:-hf-clip}
CAPTION=${CAPTION:-none}
REGISTRY=${REGISTRY:-127.0.0.1:5000}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-900}
CONTAINER=${CONTAINER:-clip-service-check}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
export BENTOML_HOME=$WORK/bentoml BENTOML_DO_NOT_TRACK=true
# Docker 20.10's legacy builder: no buildx plugin is needed (BentoML then renders no --mount).
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

say() { printf '[check] %s\n' "$*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}
step() { printf '\n[check] == %s\n' "$*" >&2; }
elapsed() { echo $(($(date +%s) - $1)); }

cleanup() {
    if [[ -z ${KEEP:-} ]] && docker container inspect "$CONTAINER" >/dev/null 2>&1; then
        docker logs "$CONTAINER" >"$WORK/container.log" 2>&1 || true
        docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "1/8 tools and Docker daemon"
for tool in docker curl; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install docker.io curl)"
done
"$PYTHON" -c 'import bentoml, clip_service' 2>/dev/null \
    || die "$PYTHON lacks bentoml or the project: set PYTHON= or create .venv"
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "no Docker daemon and no dockerd (apt-get install docker.io)"
    say "starting dockerd (log: $WORK/dockerd.log)"
    nohup dockerd >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do
        docker version >/dev/null 2>&1 && break
        sleep 1
    done
    docker version >/dev/null 2>&1 || die "dockerd did not start; see $WORK/dockerd.log"
fi
say "docker daemon $(docker version --format '{{.Server.Version}}')"

step "2/8 base image $BASE_IMAGE"
start=$(date +%s)
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ -z ${EXTRA_CA_CERTS+set} ]]; then
        EXTRA_CA_CERTS=$(find /usr/local/share/ca-certificates -name '*.crt' -printf '%p ' 2>/dev/null || true)
    fi
    uv=$(dirname "$PYTHON")/uv
    [[ -x $uv ]] || uv=$(command -v uv || true)
    BASE_IMAGE=$BASE_IMAGE EXTRA_CA_CERTS=$EXTRA_CA_CERTS UV=$uv WORK=$WORK/rootfs \
        "$REPO/deploy/container/base-image.sh" || die "base image"
fi
base_s=$(elapsed "$start")
say "$BASE_IMAGE: $(docker image inspect -f '{{.Id}}' "$BASE_IMAGE") (${base_s}s)"

step "3/8 bentoml build -f $BENTOFILE"
cd "$REPO"
name=$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$BENTOFILE")
# One Bento at a time in this BentoML home: each build gets a new version.
"$PYTHON" -m bentoml delete -y "$name" >/dev/null 2>&1 || true
"$PYTHON" -m bentoml build -f "$BENTOFILE" --output tag "$REPO" >"$WORK/build.log" 2>&1 \
    || die "bentoml build; see $WORK/build.log"
tag=$(grep -o '__tag__:.*' "$WORK/build.log" | tail -1 | cut -d: -f2-)
[[ -n $tag ]] || die "no Bento tag in $WORK/build.log"
say "Bento $tag"

step "4/8 bentoml containerize $tag (DOCKER_BUILDKIT=$DOCKER_BUILDKIT, network host)"
start=$(date +%s)
"$PYTHON" -m bentoml containerize "$tag" --opt network=host -t "$tag" \
    >"$WORK/containerize.log" 2>&1 || {
    grep -E -i -B3 -A8 'error|returned a non-zero' "$WORK/containerize.log" | tail -40 >&2 || true
    die "bentoml containerize; full log: $WORK/containerize.log"
}
build_s=$(elapsed "$start")
cached=$(grep -c 'Using cache' "$WORK/containerize.log" || true)
# Earlier runs' images (other Bento versions) share all but their last layers with this one:
# untag them now (after the build, which used them as its cache).
docker images --format '{{.Repository}}:{{.Tag}}' | grep -E "^($REGISTRY/)?$name:" \
    | grep -v -x -F -e "$tag" | xargs -r docker rmi >/dev/null 2>&1 || true
image_id=$(docker image inspect -f '{{.Id}}' "$tag")
image_size=$(docker image inspect -f '{{.Size}}' "$tag")
say "image $tag $image_id, $((image_size / 1000000)) MB, built in ${build_s}s ($cached steps from Docker's cache)"

step "5/8 tiny models"
"$PYTHON" -m clip_service.testing.tiny_models "$WORK/models" >"$WORK/models.log" 2>&1 \
    || die "tiny models; see $WORK/models.log"
chmod -R a+rX "$WORK/models" # the image runs as uid 1034
[[ -d $WORK/models/$CLIP_MODEL ]] || die "no tiny model $CLIP_MODEL (hf-clip or open-clip)"
clip_spec=/models/$CLIP_MODEL
[[ $CLIP_MODEL == open-clip ]] && clip_spec=local-dir:/models/open-clip
caption_spec=none
[[ $CAPTION != none ]] && caption_spec=/models/$CAPTION

step "6/8 docker run, wait for /readyz (CLIP_MODEL=$clip_spec CAPTION_MODEL=$caption_spec)"
docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
curl -s -o /dev/null "http://127.0.0.1:$PORT/" && die "port $PORT is already in use: set PORT"
start=$(date +%s)
docker run -d --name "$CONTAINER" --network host \
    -v "$WORK/models:/models:ro" \
    -e BENTOML_HOST=127.0.0.1 -e BENTOML_PORT="$PORT" \
    -e CLIP_MODEL="$clip_spec" -e CAPTION_MODEL="$caption_spec" -e HF_HUB_OFFLINE=1 \
    "$tag" >/dev/null || die "docker run"
url=http://127.0.0.1:$PORT
code=000
while ((code != 200)); do
    if [[ $(docker container inspect -f '{{.State.Running}}' "$CONTAINER") != true ]]; then
        docker logs --tail 60 "$CONTAINER" >&2 || true
        die "the container exited ($(docker container inspect -f '{{.State.ExitCode}}' "$CONTAINER"))"
    fi
    if (($(elapsed "$start") > READY_TIMEOUT_S)); then
        docker logs --tail 60 "$CONTAINER" >&2 || true
        die "/readyz not 200 after ${READY_TIMEOUT_S}s (last: $code)"
    fi
    sleep 2
    code=$(curl -s -o "$WORK/readyz.json" -w '%{http_code}' "$url/readyz" || true)
done
ready_s=$(elapsed "$start")
say "/readyz 200 after ${ready_s}s"

step "7/8 POST /vectorize (raw PNG body)"
"$PYTHON" -c '
import sys
import numpy as np
from PIL import Image
pixels = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
Image.fromarray(pixels).save(sys.argv[1])
' "$WORK/probe.png"
code=$(curl -s -o "$WORK/vectorize.json" -w '%{http_code}' --data-binary "@$WORK/probe.png" \
    -H 'content-type: image/png' "$url/vectorize" || true)
[[ $code == 200 ]] || die "/vectorize answered $code: $(head -c 500 "$WORK/vectorize.json")"
dims=$("$PYTHON" -c '
import json, math, sys
vector = json.load(open(sys.argv[1]))["vector"]
assert vector and all(isinstance(x, float) and math.isfinite(x) for x in vector), vector
assert math.fsum(x * x for x in vector) > 0, "zero vector"
print(len(vector))
' "$WORK/vectorize.json") || die "/vectorize: not a vector: $(head -c 300 "$WORK/vectorize.json")"
say "/vectorize 200: a vector of $dims floats: $(head -c 120 "$WORK/vectorize.json")..."

curl -sf "$url/metrics" | grep -q '^bentoml_' || die "/metrics has no bentoml_ series"
say "/metrics answers"

step "8/8 docker push to $REGISTRY"
if ! curl -sf "http://$REGISTRY/v2/" >/dev/null; then
    command -v docker-registry >/dev/null \
        || die "nothing answers on $REGISTRY and no docker-registry (apt-get install docker-registry)"
    mkdir -p "$WORK/registry"
    cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $WORK/registry}, delete: {enabled: true}}
http: {addr: $REGISTRY}
EOF
    say "starting docker-registry on $REGISTRY (log: $WORK/registry.log)"
    nohup docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
    for _ in $(seq 30); do
        curl -sf "http://$REGISTRY/v2/" >/dev/null && break
        sleep 1
    done
    curl -sf "http://$REGISTRY/v2/" >/dev/null || die "registry did not start; see $WORK/registry.log"
fi
repo=${tag%%:*}
version=${tag#*:}
remote=$REGISTRY/$repo:$version
docker tag "$tag" "$remote"
start=$(date +%s)
docker push "$remote" >"$WORK/push.log" 2>&1 || {
    tail -20 "$WORK/push.log" >&2
    die "docker push $remote"
}
push_s=$(elapsed "$start")
pushed=$(grep -o 'sha256:[0-9a-f]\{64\}' "$WORK/push.log" | tail -1)
catalog=$(curl -sf "http://$REGISTRY/v2/_catalog") || die "GET /v2/_catalog"
tags=$(curl -sf "http://$REGISTRY/v2/$repo/tags/list") || die "GET /v2/$repo/tags/list"
served=$(curl -sfI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/$repo/manifests/$version" | tr -d '\r' \
    | awk 'tolower($1) == "docker-content-digest:" {print $2}')
say "catalog: $catalog"
say "tags: $tags"
grep -q "\"$repo\"" <<<"$catalog" || die "$repo not in the catalog"
grep -q "\"$version\"" <<<"$tags" || die "$version not in $repo's tags"
[[ -n $pushed && $served == "$pushed" ]] || die "registry digest $served != pushed $pushed"
say "pushed $remote in ${push_s}s; the registry serves digest $served"

cat <<EOF

[check] OK
  base image     $BASE_IMAGE (${base_s}s)
  image          $tag
  image id       $image_id
  image size     $((image_size / 1000000)) MB
  containerize   ${build_s}s ($cached steps from Docker's cache)
  ready (/readyz 200 after docker run)  ${ready_s}s
  /vectorize     a vector of $dims floats
  pushed         $remote ($served, ${push_s}s)
  registry       $(du -sh "$WORK/registry" 2>/dev/null | cut -f1) under $WORK/registry
  total          $(elapsed "$began")s
EOF
