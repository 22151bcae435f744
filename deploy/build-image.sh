#!/usr/bin/env bash
# Builds the qcinode image with podman on a locally made Debian base, with no
# container registry: Debian packages and PyPI wheels only.
#
#   deploy/build-image.sh [TAG]        (default localhost/qcinode:VERSION, the
#                                       image `qcinode deploy k8s` names by default)
#   deploy/build-image.sh --print-tag  (print the default tag and exit)
#
# Writes the outcome to build/image-status ("built TAG", "unavailable: why" or
# "failed: why") so tests can tell "podman cannot run here" from "the build broke".
# Exits 0 only when the image was built: 1 when the build failed, 2 when
# podman cannot run here.
set -uo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
default_tag=localhost/qcinode:$version
if [ "${1:-}" = "--print-tag" ]; then echo "$default_tag"; exit 0; fi
tag=${1:-$default_tag}
base=localhost/qcinode-base:bookworm
status_file=build/image-status
mkdir -p build
export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"

say() { echo "$1" > "$status_file"; echo "build-image: $1"; }

if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq podman runc mmdebstrap uidmap >/dev/null \
      || { say "unavailable: apt-get could not install podman, runc, mmdebstrap"; exit 2; }
  else
    say "unavailable: podman and mmdebstrap are not installed and this is not a root Debian machine"; exit 2
  fi
fi
if ! podman info >/dev/null 2>&1; then
  say "unavailable: podman info fails here: $(podman info 2>&1 | tail -1)"; exit 2
fi
if ! podman image exists "$base"; then
  rootfs=$(mktemp -d)/rootfs.tar
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv bookworm "$rootfs" \
    || { say "failed: mmdebstrap could not make the base rootfs"; exit 1; }
  podman import --quiet "$rootfs" "$base" >/dev/null || { say "failed: podman import"; exit 1; }
  rm -rf "$(dirname "$rootfs")"
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
python3 -m pip wheel --quiet --wheel-dir "$context/wheelhouse" . || { say "failed: pip wheel"; exit 1; }
podman build --quiet -f deploy/Dockerfile --build-arg "BASE=$base" -t "$tag" "$context" >/dev/null \
  || { say "failed: podman build"; exit 1; }
say "built $tag"
