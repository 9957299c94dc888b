#!/usr/bin/env bash
# Build the gdpo-megatron image from the repository root and, optionally, turn it into a
# squashfs file for Slurm + pyxis/enroot.
#   containers/build.sh [TAG]                 docker build
#   SQSH=/lustre/.../gdpo.sqsh containers/build.sh [TAG]   build, then enroot import
# BASE_IMAGE=nvcr.io/nvidia/pytorch:YY.MM-py3 selects another NGC release.
set -euo pipefail

tag=${1:-gdpo-megatron:latest}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_args=()
if [ -n "${BASE_IMAGE:-}" ]; then
    build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi

docker build "${build_args[@]}" -f "$root/containers/Dockerfile" -t "$tag" "$root"

if [ -n "${SQSH:-}" ]; then
    # enroot reads the local docker daemon with the dockerd:// scheme.
    enroot import --output "$SQSH" "dockerd://$tag"
    echo "squashfs image: $SQSH (set container_image to it in your cluster profile)"
fi
