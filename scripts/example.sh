#!/usr/bin/env bash
# The main job on the bundled example, no registry and no GPU needed:
# generate a small realistic Triton cache, pack it into the local OCI store,
# inspect it, and unpack what fits an (overridden) sm_80 GPU into a fresh dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
work=$(mktemp -d -t cargohold-example.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CARGOHOLD_STORE="$work/store"

"$bin/gencache" -o "$work/cache" -n 12 --launchers 1 --targets cuda:80:32,hip:gfx942:64 --seed 1
"$bin/cargohold" -c -i example/triton-cache:latest -d "$work/cache"
"$bin/cargohold" inspect -i example/triton-cache:latest --gpu cuda:80:32
"$bin/cargohold" -e -i example/triton-cache:latest -d "$work/extracted" --gpu cuda:80:32
echo "extracted entries:"
ls "$work/extracted"
