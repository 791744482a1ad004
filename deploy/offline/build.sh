#!/usr/bin/env bash
# Build the compose set-up's images where Docker Hub and the PyTorch wheel index are out of reach, but Debian's
# apt mirror and a PyPI mirror are not (how it was built and load-tested on the project's test machine).
#
#   sudo deploy/offline/build.sh [PIP_EXTRA_INDEX_URL] [PIP_TRUSTED_HOST]
#   (several trusted hosts in one quoted argument, e.g. "mirror pypi.org files.pythonhosted.org" behind a
#   proxy whose certificate the image does not know)
#
# 1. Stand-ins for the two base images, from Debian bookworm (debootstrap): python:3.11-slim (Debian's Python 3.11
#    in a virtual environment at /usr/local) and nginx:1.27-alpine (Debian's nginx-light). Same roles, not the
#    same images.
# 2. The app image from the repository's Dockerfile with torch from PyPI (TORCH_INDEX=pypi), tagged
#    mgnet-explorer:pypi. PyPI's torch wheel carries CUDA libraries: about 7.8 GB instead of about 1 GB.
# Then: MGNET_TORCH_INDEX=pypi docker compose up -d --scale app=2
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
extra="${1:-}"
trusted="${2:-}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,curl \
    bookworm "$rootfs" http://deb.debian.org/debian
tar -C "$rootfs" -c . | docker import - bookworm-local:base
docker build --network host -t python:3.11-slim -f "$here/python.Dockerfile" "$here"
docker build --network host -t nginx:1.27-alpine -f "$here/nginx.Dockerfile" "$here"
docker build --network host --build-arg TORCH_INDEX=pypi \
    ${extra:+--build-arg "PIP_EXTRA_INDEX_URL=$extra"} ${trusted:+--build-arg "PIP_TRUSTED_HOST=$trusted"} \
    -t mgnet-explorer:pypi "$root"
