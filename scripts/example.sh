#!/usr/bin/env bash
# The main job on the bundled example, no registry and no GPU needed:
#  1. generate a small realistic Triton cache (cmd/gencache),
#  2. pack it into the local OCI layout store (cargohold -c),
#  3. mount cargohold-fs on an empty temp dir backed by that image, for an
#     (overridden) sm_80 GPU, and replay Triton's cache-hit syscalls for one
#     kernel against it: the KEY dir is fetched on lookup and served,
#  4. show the mount's status, unmount,
#  5. do the same through a plain extract (cargohold -e).
# Needs /dev/fuse (root mounts directly; others through fusermount3).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
work=$(mktemp -d -t cargohold-example.XXXXXX)
fspid=
cleanup() {
	if [ -n "$fspid" ]; then kill "$fspid" 2>/dev/null || true; wait "$fspid" 2>/dev/null || true; fi
	mountpoint -q "$work/mnt" 2>/dev/null && { fusermount3 -uz "$work/mnt" 2>/dev/null || umount -l "$work/mnt"; }
	rm -rf "$work"
}
trap cleanup EXIT
export CARGOHOLD_STORE="$work/store"
image=example/triton-cache:latest

echo "== 1. generate a Triton cache (12 kernels for sm_80 and gfx942, 1 launcher)"
"$bin/gencache" -o "$work/cache" -n 12 --launchers 1 --targets cuda:80:32,hip:gfx942:64 --seed 1
echo "== 2. pack it into the local store"
"$bin/cargohold" -c -i "$image" -d "$work/cache"
"$bin/cargohold" inspect -i "$image" --gpu cuda:80:32 | grep -A3 '^targets'

echo "== 3. mount cargohold-fs on $work/mnt and replay a Triton cache hit"
"$bin/cargohold-fs" -f -l warning -i "$image" --gpu cuda:80:32 --state-dir "$work/state" "$work/mnt" &
fspid=$!
for _ in $(seq 100); do
	grep -q '"index_ready": true' "$work/state/status.json" 2>/dev/null && break
	sleep 0.1
done
key=$(grep -l '"arch": 80' "$work"/cache/*/*.json | grep -v __grp__ | head -1 | xargs dirname | xargs basename)
"$bin/replay" hit --root "$work/mnt" --expect "$work/cache" "$key"
echo "== 4. status"
sleep 1.2
"$bin/cargohold-fs" status --state-dir "$work/state"
kill "$fspid"; wait "$fspid" || true; fspid=

echo "== 5. the same kernel through a plain extract"
"$bin/cargohold" -e -i "$image" -d "$work/extracted" --gpu cuda:80:32
"$bin/replay" hit --root "$work/extracted" --expect "$work/cache" "$key"
