#!/usr/bin/env bash
# End-to-end check of cargohold against real Triton on a GPU host (README.md
# beside this file). Runs from prebuilt binaries ($BIN, default bin/) with no
# Go toolchain, no network and no registry: images live in a local OCI layout
# store.
#
#   1. ldd: the binaries start without libnvidia-ml (go-nvml dlopens it);
#      `cargohold gpu` detects the GPU through NVML where there is one.
#   2. cold: kernels.py compiles 3 kernels into an empty TRITON_CACHE_DIR.
#   3. pack: cargohold -c puts that cache into the local store.
#   4. fuse: cargohold-fs mounts the image on an empty dir; kernels.py runs
#      against it; Triton must compile nothing (no KEY dir lands in the dir
#      under the mount, the upper dir, read after unmount)
#      and the mount's status must count hits. No FUSE here: said, skipped.
#   5. extract: cargohold -e into another empty dir; kernels.py runs against
#      it; the KEY dirs must be the same before and after.
#   6. one JSON object on stdout; human lines on stderr.
#
# Without a GPU (or torch/triton) steps 2-5 are reported as skipped with the
# reason; steps 1, the GPU report and the FUSE probe still run. Exit status:
# 0 when "ok" is true, 1 otherwise.
#
# Environment: BIN (binaries dir), E2E_STORE (OCI layout store; default a
# fresh dir), E2E_KEEP=1 (keep the work dir), E2E_REQUIRE_FUSE=1 (a FUSE
# mount that fails is a failure, not a skip), PYTHON (default python3),
# E2E_DEADLINE (seconds for the whole script, default 280).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd -P)
root=$(cd "$here/../.." && pwd -P)
# BIN: default the repo's bin/; a relative one is taken from the caller's dir.
BIN=${BIN:-$root/bin}
[[ $BIN == /* ]] || BIN=$PWD/$BIN
cd "$root" || exit 1

# --- CLI conventions (adjust here if the binaries' flags change) -----------
CARGOHOLD=$BIN/cargohold
CARGOHOLD_FS=$BIN/cargohold-fs
IMAGE=${E2E_IMAGE:-e2e/triton-cache:latest}
PROBE_IMAGE=e2e/fuse-probe:latest
CREATE=(-c)
EXTRACT=(-e)
IMAGE_FLAG=-i
DIR_FLAG=-d
STORE_FLAG=--store
STATE_FLAG=--state-dir
FOREGROUND_FLAG=--foreground
GPU_CMD=(gpu)
# The mount's upper dir is the mountpoint's own dir (what lies under the
# mount): writes land there, seen once the mount is gone.
STATUS_FILE=status.json  # the mount's status: STATE/status.json
# ---------------------------------------------------------------------------

PY=${PYTHON:-python3}
KERNELS=$here/kernels.py
DEADLINE=${E2E_DEADLINE:-280}
T0=$(date +%s)

# Triton must use exactly the cache dir we give it; cargohold must detect the
# GPU itself (no override).
unset TRITON_ALWAYS_COMPILE TRITON_CACHE_MANAGER TRITON_REMOTE_CACHE_BACKEND \
	TRITON_KERNEL_OVERRIDE TRITON_KERNEL_DUMP TRITON_DUMP_DIR CARGOHOLD_GPU

say() { printf 'e2e: %s\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/cargohold-e2e.XXXXXX") || exit 1
work=$(cd "$work" && pwd -P)
STORE=${E2E_STORE:-$work/store}
res=$work/result.json
fs_pids=()
fs_mnts=()

# --- the result object: small python3 helpers over $res -----------------

# jset PATH JSON: set a dotted field to a JSON value (invalid JSON: stored as a string).
jset() {
	"$PY" - "$res" "$1" "$2" <<'PY'
import json, sys
f, path, raw = sys.argv[1:4]
try:
    v = json.loads(raw)
except ValueError:
    v = raw
d = json.load(open(f))
o = d
keys = path.split(".")
for k in keys[:-1]:
    o = o.setdefault(k, {})
o[keys[-1]] = v
json.dump(d, open(f, "w"))
PY
}

# jstr PATH STRING: set a dotted field to a string.
jstr() { jset "$1" "$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$2")"; }

# jlines PATH FILE: set a dotted field to the list of FILE's non-empty lines.
jlines() { jset "$1" "$("$PY" -c 'import json,sys; print(json.dumps([l for l in open(sys.argv[1]).read().splitlines() if l]))' "$2")"; }

# jget PATH: print a field (JSON), or nothing.
jget() {
	"$PY" - "$res" "$1" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."):
    if not isinstance(o, dict) or k not in o:
        sys.exit(0)
    o = o[k]
print(json.dumps(o))
PY
}

note() { say "note: $*"; "$PY" - "$res" "$*" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["notes"].append(sys.argv[2]); json.dump(d, open(sys.argv[1], "w"))
PY
}

fail() { say "FAIL: $*"; "$PY" - "$res" "$*" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["failures"].append(sys.argv[2]); json.dump(d, open(sys.argv[1], "w"))
PY
}

# last_json FILE: the last line of FILE that parses as a JSON object, or nothing.
last_json() {
	"$PY" - "$1" <<'PY'
import json, sys
for line in reversed(open(sys.argv[1]).read().splitlines()):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if isinstance(v, dict):
        print(json.dumps(v))
        break
PY
}

# field JSON KEY: one top-level field of a JSON object (JSON), or "null".
field() { "$PY" -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]).get(sys.argv[2])))' "$1" "$2"; }

# status_counts FILE: "HITS ERRORS LAST_ERROR" from a mount's status JSON:
# the first "hits" at any depth, the sum of every "errors"/"*_errors" count,
# the first non-empty "last_error" (fields may be nested by the writer).
status_counts() {
	"$PY" - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
hits, errors, last = None, 0, ""
todo = [d]
while todo:
    o = todo.pop(0)
    if not isinstance(o, dict):
        continue
    for k, v in o.items():
        if isinstance(v, dict):
            todo.append(v)
        elif k == "hits" and hits is None and isinstance(v, int):
            hits = v
        elif (k == "errors" or k.endswith("_errors")) and isinstance(v, int):
            errors += v
        elif k == "last_error" and v and not last:
            last = str(v)
print(hits if hits is not None else "none", errors, last.replace("\n", " ") or "-")
PY
}

# --- time and processes -----------------------------------------------------

now() { date +%s.%N; }
elapsed() { "$PY" -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))' "$1" "$2"; }

# tmo WANT: WANT seconds, or what is left of the script's deadline if less (at least 5).
tmo() {
	local left=$((DEADLINE - ($(date +%s) - T0)))
	[ "$left" -lt "$1" ] && { [ "$left" -lt 5 ] && left=5; echo "$left"; return; }
	echo "$1"
}

# keys DIR: sorted KEY dir names (52-char base32) directly in DIR.
keys() {
	local d
	[ -d "$1" ] || return 0
	for d in "$1"/*/; do
		d=${d%/}
		d=${d##*/}
		[[ $d =~ ^[A-Z2-7]{52}$ ]] && echo "$d"
	done | LC_ALL=C sort
}

is_mounted() { mountpoint -q "$1" 2>/dev/null || grep -qs " $1 fuse" /proc/mounts; }

# mount_fs IMAGE STATE MNT LOG: start cargohold-fs in the background and wait
# (bounded) for the mount. Sets fs_pid, and mount_err on failure. Returns 0 once mounted.
mount_fs() {
	local image=$1 state=$2 mnt=$3 log=$4 i
	mkdir -p "$state" "$mnt"
	"$CARGOHOLD_FS" "$IMAGE_FLAG" "$image" "$STORE_FLAG" "$STORE" "$STATE_FLAG" "$state" "$FOREGROUND_FLAG" "$mnt" \
		>"$log" 2>&1 &
	fs_pid=$!
	fs_pids+=("$fs_pid")
	fs_mnts+=("$mnt")
	for ((i = 0; i < 60; i++)); do
		is_mounted "$mnt" && return 0
		if ! kill -0 "$fs_pid" 2>/dev/null; then
			wait "$fs_pid"
			mount_err="cargohold-fs exited with status $? before mounting"
			return 1
		fi
		sleep 0.25
	done
	mount_err="cargohold-fs did not mount within 15 s"
	return 1
}

# unmount_fs PID MNT: SIGTERM, wait (bounded), then fusermount3 -u / umount -l, then SIGKILL.
# Returns 0 if the mount is gone and the process exited by itself.
unmount_fs() {
	local pid=$1 mnt=$2 i clean=0
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null
		for ((i = 0; i < 40; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.25
		done
	fi
	if kill -0 "$pid" 2>/dev/null || is_mounted "$mnt"; then
		clean=1
		is_mounted "$mnt" && { fusermount3 -u "$mnt" 2>/dev/null || fusermount -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null; }
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	is_mounted "$mnt" && return 1
	return "$clean"
}

cleanup() {
	local i left=0
	for i in "${!fs_pids[@]}"; do
		unmount_fs "${fs_pids[$i]}" "${fs_mnts[$i]}" || true
		is_mounted "${fs_mnts[$i]}" && left=1
	done
	# Never rm -rf across a mount point (a stuck mount, or one a binary left).
	grep -qs " $work/" /proc/mounts && left=1
	if [ "${E2E_KEEP:-0}" = 1 ] || [ "$left" = 1 ]; then
		say "work dir kept: $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# Every field is present from the start; steps fill them in.
cat >"$res" <<'JSON'
{"notes": [], "failures": [], "gpu": false, "gpu_reason": "", "nvidia_targets": [], "ldd_ok": false,
 "cold_s": null, "kernels_ok": null,
 "cold": {}, "pack": {}, "fuse": {"available": false, "mounted": false, "warm_s": null, "upper_new_keys": null, "status": null},
 "extract": {"warm_s": null, "new_keys": null}}
JSON
jstr work "$work"
jstr store "$STORE"
jstr image "$IMAGE"
mkdir -p "$STORE"

# --- 0. binaries -------------------------------------------------------------
for b in "$CARGOHOLD" "$CARGOHOLD_FS"; do
	[ -x "$b" ] || fail "binary $b missing (build on a Go machine: CGO_ENABLED=1 make build, then copy bin/)"
done

# --- 1. ldd: starts without NVML, no missing libraries --------------------------
ldd_ok=true
for b in "$CARGOHOLD" "$CARGOHOLD_FS"; do
	[ -x "$b" ] || { ldd_ok=false; continue; }
	name=${b##*/}
	out=$(ldd "$b" 2>&1)
	printf '%s\n' "$out" >"$work/ldd.$name"
	jlines "ldd.$name" "$work/ldd.$name"
	if grep -q 'not found' <<<"$out"; then
		ldd_ok=false
		fail "ldd $b: a library is not found: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ' | paste -sd ';' -)"
	fi
	if grep -q 'libnvidia-ml' <<<"$out"; then
		ldd_ok=false
		fail "ldd $b: links libnvidia-ml directly; it must start on hosts without the NVIDIA management library"
	fi
	# go-nvml needs cgo; a static (CGO_ENABLED=0) build never sees an NVIDIA GPU.
	if ! grep -q 'libc\.so' <<<"$out"; then
		ldd_ok=false
		fail "ldd $b: not dynamically linked against libc (built with CGO_ENABLED=0?): it cannot load NVML"
	fi
done
jset ldd_ok "$ldd_ok"
# (Read all of ldconfig's output: grep -q closing the pipe early would fail it under pipefail.)
if grep -q 'libnvidia-ml\.so\.1' <<<"$(ldconfig -p 2>/dev/null)"; then nvml=true; else nvml=false; fi
jset nvml_library "$nvml"
say "ldd ok: $ldd_ok; libnvidia-ml.so.1 on this host: $nvml"

# --- GPU as cargohold sees it (NVML) and as torch/triton see it -----------------
nvidia_targets='[]'
if [ -x "$CARGOHOLD" ]; then
	if timeout "$(tmo 30)" "$CARGOHOLD" "${GPU_CMD[@]}" >"$work/gpu.out" 2>"$work/gpu.err"; then
		jlines gpu_report "$work/gpu.out"
		nvidia_targets=$("$PY" - "$work/gpu.out" <<'PY'
import json, sys
ts = []
for line in open(sys.argv[1]):
    k, _, v = line.partition(":")
    if k.strip() == "targets":
        ts = [t.strip() for t in v.split(",") if t.strip().startswith("cuda:")]
print(json.dumps(ts))
PY
)
		nvidia_line=$(sed -n 's/^nvidia:[[:space:]]*//p' "$work/gpu.out" | head -n1)
		jstr nvidia_line "$nvidia_line"
		say "cargohold gpu: $(grep '^targets:' "$work/gpu.out") (nvidia: $nvidia_line)"
	else
		fail "cargohold gpu failed: $(tail -n3 "$work/gpu.err" | paste -sd ';' -)"
	fi
fi
jset nvidia_targets "$nvidia_targets"

env_json=$(timeout "$(tmo 120)" "$PY" "$KERNELS" --check-env 2>"$work/env.err")
env_json=$(last_json <(printf '%s\n' "$env_json"))
if [ -z "$env_json" ]; then
	fail "kernels.py --check-env printed no JSON: $(tail -n3 "$work/env.err" | paste -sd ';' -)"
	env_json='{"cuda":false,"reason":"kernels.py --check-env failed"}'
fi
jset env "$env_json"
gpu=false
reason=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1]).get("reason") or "")' "$env_json")
torch_target=$(field "$env_json" target)
if [ "$(field "$env_json" cuda)" = true ] && [ "$(field "$env_json" triton)" != null ]; then
	gpu=true
	reason=""
fi
# Does NVML (through our binary) see the GPU torch uses?
nvml_sees=$("$PY" -c 'import json,sys; print(str(json.loads(sys.argv[2]) in json.loads(sys.argv[1])).lower())' \
	"$nvidia_targets" "$torch_target")
if [ "$(field "$env_json" cuda)" = true ] && [ "$nvml_sees" != true ]; then
	fail "torch sees $torch_target but cargohold gpu (NVML) reports $nvidia_targets"
fi
if [ "$gpu" = false ]; then
	if [ "$nvidia_targets" = '[]' ]; then
		reason="no NVIDIA GPU: ${reason:-torch/triton unusable}; cargohold gpu: ${nvidia_line:-no report}"
	else
		reason="cargohold sees $nvidia_targets but torch/triton cannot run kernels: $reason"
	fi
fi
jset gpu "$gpu"
jstr gpu_reason "$reason"
if [ "$gpu" = true ]; then
	say "GPU: $(field "$env_json" device) $torch_target, torch $(field "$env_json" torch), triton $(field "$env_json" triton)"
else
	say "NO GPU: $reason"
	say "steps cold/pack/fuse/extract are skipped"
fi

# --- 4a. FUSE: can a cargohold-fs mount be made here? --------------------------------
# Probe with a tiny image of one non-kernel entry: it needs no GPU, and a
# write through the mount must land in the dir under the mount (the upper
# dir, which the warm check reads after unmount).
fuse_ok=false
if [ -e /dev/fuse ]; then
	jset fuse.dev_fuse true
	if [ -x "$CARGOHOLD" ] && [ -x "$CARGOHOLD_FS" ]; then
		pk=$("$PY" -c 'import base64,hashlib; print(base64.b32encode(hashlib.sha256(b"cargohold e2e fuse probe").digest()).decode().rstrip("="))')
		mkdir -p "$work/probe/cache/$pk"
		echo "cargohold e2e fuse probe" >"$work/probe/cache/$pk/probe.txt"
		if ! timeout "$(tmo 60)" "$CARGOHOLD" "${CREATE[@]}" "$IMAGE_FLAG" "$PROBE_IMAGE" "$DIR_FLAG" "$work/probe/cache" \
			"$STORE_FLAG" "$STORE" >"$work/probe/create.log" 2>&1; then
			fail "cargohold -c of the probe image failed: $(tail -n3 "$work/probe/create.log" | paste -sd ';' -)"
		fi
		if mount_fs "$PROBE_IMAGE" "$work/probe/state" "$work/probe/mnt" "$work/probe/fs.log"; then
			jset fuse.probe.mounted true
			wk=$("$PY" -c 'import base64,hashlib; print(base64.b32encode(hashlib.sha256(b"cargohold e2e write probe").digest()).decode().rstrip("="))')
			wrote=false
			if mkdir "$work/probe/mnt/$wk" && echo probe >"$work/probe/mnt/$wk/w.txt"; then
				wrote=true
			fi
			if [ -f "$work/probe/mnt/$pk/probe.txt" ]; then
				jset fuse.probe.lower_visible true
			else
				jset fuse.probe.lower_visible false
			fi
			if unmount_fs "$fs_pid" "$work/probe/mnt"; then
				jset fuse.probe.clean_unmount true
			else
				jset fuse.probe.clean_unmount false
				fail "cargohold-fs did not unmount and exit on SIGTERM within 10 s"
			fi
			if [ "$wrote" = true ] && [ -f "$work/probe/mnt/$wk/w.txt" ] && [ ! -e "$work/probe/mnt/$pk" ]; then
				jset fuse.probe.upper_ok true
				fuse_ok=true
			else
				jset fuse.probe.upper_ok false
				fail "a write through the probe mount did not land in the dir under the mount ($work/probe/mnt/$wk/w.txt after unmount)"
			fi
		else
			jset fuse.probe.mounted false
			why="$mount_err: $(tail -n5 "$work/probe/fs.log" | paste -sd ';' -)"
			jstr fuse.reason "$why"
			if [ "${E2E_REQUIRE_FUSE:-0}" = 1 ]; then fail "$why"; else note "FUSE cannot be mounted here: $why"; fi
			unmount_fs "$fs_pid" "$work/probe/mnt" || true
		fi
	fi
else
	jset fuse.dev_fuse false
	jstr fuse.reason "/dev/fuse is missing: FUSE cannot be mounted here"
	if [ "${E2E_REQUIRE_FUSE:-0}" = 1 ]; then fail "/dev/fuse is missing"; else note "/dev/fuse is missing: FUSE steps skipped"; fi
fi
jset fuse.available "$fuse_ok"
say "FUSE: available=$fuse_ok"

# run_kernels NAME CACHE_DIR: kernels.py in a new process; sets run_json, run_wall.
run_kernels() {
	local name=$1 dir=$2 t1 t2
	say "$name: kernels.py with TRITON_CACHE_DIR=$dir"
	t1=$(now)
	TRITON_CACHE_DIR=$dir timeout "$(tmo 150)" "$PY" "$KERNELS" >"$work/$name.out" 2>"$work/$name.err"
	run_rc=$?
	t2=$(now)
	run_wall=$(elapsed "$t1" "$t2")
	run_json=$(last_json "$work/$name.out")
	[ -n "$run_json" ] || run_json='{"ok":false,"error":"no JSON from kernels.py"}'
	if [ "$run_rc" != 0 ] || [ "$(field "$run_json" ok)" != true ]; then
		fail "$name: kernels.py exit $run_rc: $(field "$run_json" error) $(tail -n5 "$work/$name.err" | paste -sd ';' -)"
		return 1
	fi
	say "$name: ok in ${run_wall}s (kernel first launches $(field "$run_json" launch_s)s)"
}

kernels_ok=null
if [ "$gpu" != true ]; then
	for s in cold pack extract; do jstr "$s.skipped" "$reason"; done
	jstr fuse.skipped "$reason"
else
	kernels_ok=true
	# --- 2. cold compile into an empty cache ------------------------------------
	cold=$work/cold
	mkdir -p "$cold"
	run_kernels cold "$cold" || kernels_ok=false
	jset cold.result "$run_json"
	jset cold.wall_s "$run_wall"
	jset cold_s "$run_wall"
	cold_launch=$(field "$run_json" launch_s)
	keys "$cold" >"$work/cold.keys"
	jlines cold.keys "$work/cold.keys"
	nkeys=$(wc -l <"$work/cold.keys")
	[ "$nkeys" -gt 0 ] || fail "cold: Triton wrote no KEY dir into $cold (is TRITON_CACHE_DIR honoured?)"
	say "cold: $nkeys KEY dirs"

	# --- 3. pack into the local store ----------------------------------------------
	t1=$(now)
	if timeout "$(tmo 120)" "$CARGOHOLD" "${CREATE[@]}" "$IMAGE_FLAG" "$IMAGE" "$DIR_FLAG" "$cold" "$STORE_FLAG" "$STORE" \
		>"$work/pack.out" 2>"$work/pack.err"; then
		jset pack.ok true
		jstr pack.output "$(tail -n1 "$work/pack.out")"
	else
		jset pack.ok false
		fail "cargohold -c failed: $(tail -n3 "$work/pack.err" | paste -sd ';' -)"
	fi
	jset pack.s "$(elapsed "$t1" "$(now)")"
	if timeout "$(tmo 30)" "$CARGOHOLD" inspect "$IMAGE_FLAG" "$IMAGE" "$STORE_FLAG" "$STORE" >"$work/inspect.out" 2>&1; then
		jlines pack.inspect "$work/inspect.out"
	else
		note "cargohold inspect failed: $(tail -n2 "$work/inspect.out" | paste -sd ';' -)"
	fi

	# --- 4. warm through a cargohold-fs mount -----------------------------------
	if [ "$fuse_ok" != true ]; then
		jstr fuse.skipped "FUSE cannot be mounted here: $(jget fuse.reason)"
		say "fuse: skipped (FUSE cannot be mounted here)"
	elif mount_fs "$IMAGE" "$work/fs/state" "$work/fs/mnt" "$work/fs/fs.log"; then
		jset fuse.mounted true
		upper=$work/fs/mnt # the dir under the mount, read after unmount
		run_kernels fuse "$work/fs/mnt" || kernels_ok=false
		jset fuse.result "$run_json"
		jset fuse.warm_s "$run_wall"
		jset fuse.launch_s "$(field "$run_json" launch_s)"
		jset fuse.launch_speedup "$("$PY" -c 'import sys; c, w = float(sys.argv[1]), float(sys.argv[2]); print(round(c / w, 2) if w > 0 else None)' "$cold_launch" "$(field "$run_json" launch_s)" 2>/dev/null || echo null)"
		# The status file may be written on a timer: wait (bounded) for the
		# hits, and keep a copy in case the file goes away with the mount.
		st=$work/fs/state/$STATUS_FILE
		for ((i = 0; i < 40; i++)); do
			if [ -f "$st" ] && cp "$st" "$work/status.live.json" 2>/dev/null &&
				[ "$(status_counts "$work/status.live.json" | cut -d' ' -f1)" -gt 0 ] 2>/dev/null; then
				break
			fi
			sleep 0.25
		done
		if unmount_fs "$fs_pid" "$work/fs/mnt"; then
			jset fuse.clean_unmount true
		else
			jset fuse.clean_unmount false
			fail "fuse: cargohold-fs did not unmount and exit on SIGTERM within 10 s"
		fi
		if [ -d "$upper" ]; then
			keys "$upper" >"$work/fs.upper.keys"
			jlines fuse.upper_new_keys "$work/fs.upper.keys"
			jset fuse.upper_files "$(find "$upper" -type f | wc -l)"
			if [ -s "$work/fs.upper.keys" ]; then
				fail "fuse: Triton compiled $(wc -l <"$work/fs.upper.keys") KEY dir(s) into the upper dir: $(paste -sd ' ' "$work/fs.upper.keys")"
			fi
		else
			fail "fuse: upper dir $upper does not exist: cannot prove that Triton compiled nothing"
		fi

		[ -f "$st" ] || st=$work/status.live.json
		if [ -f "$st" ] && status=$("$PY" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$st" 2>/dev/null); then
			jset fuse.status "$status"
			read -r hits errors last <<<"$(status_counts "$st")"
			[ "$hits" -gt 0 ] 2>/dev/null || fail "fuse: status.json counts no hits (hits=$hits)"
			[ "$hits" -ge "$nkeys" ] 2>/dev/null ||
				note "fuse: status counts $hits hits for $nkeys KEY dirs in the image"
			[ "$errors" = 0 ] || fail "fuse: status.json counts $errors errors (last: $last)"
			say "fuse: status hits=$hits errors=$errors"
		else
			fail "fuse: no readable status file at $st"
		fi
	else
		jset fuse.mounted false
		fail "fuse: $IMAGE: $mount_err although the probe mounted: $(tail -n5 "$work/fs/fs.log" | paste -sd ';' -)"
	fi

	# --- 5. warm from cargohold -e ----------------------------------------------
	ext=$work/extract
	t1=$(now)
	if timeout "$(tmo 120)" "$CARGOHOLD" "${EXTRACT[@]}" "$IMAGE_FLAG" "$IMAGE" "$DIR_FLAG" "$ext" "$STORE_FLAG" "$STORE" \
		>"$work/extract.out" 2>"$work/extract.err"; then
		jset extract.s "$(elapsed "$t1" "$(now)")"
		jstr extract.output "$(tail -n1 "$work/extract.out")"
		keys "$ext" >"$work/ext.before"
		jset extract.keys "$(wc -l <"$work/ext.before")"
		missing=$(LC_ALL=C comm -23 "$work/cold.keys" "$work/ext.before" | paste -sd ' ' -)
		[ -z "$missing" ] || note "extract: KEY dirs of the cold cache not extracted: $missing"
		run_kernels extract "$ext" || kernels_ok=false
		jset extract.result "$run_json"
		jset extract.warm_s "$run_wall"
		jset extract.launch_s "$(field "$run_json" launch_s)"
		jset extract.launch_speedup "$("$PY" -c 'import sys; c, w = float(sys.argv[1]), float(sys.argv[2]); print(round(c / w, 2) if w > 0 else None)' "$cold_launch" "$(field "$run_json" launch_s)" 2>/dev/null || echo null)"
		keys "$ext" >"$work/ext.after"
		LC_ALL=C comm -13 "$work/ext.before" "$work/ext.after" >"$work/ext.new"
		jlines extract.new_keys "$work/ext.new"
		[ -s "$work/ext.new" ] && fail "extract: Triton compiled $(wc -l <"$work/ext.new") KEY dir(s): $(paste -sd ' ' "$work/ext.new")"
	else
		jset extract.s "$(elapsed "$t1" "$(now)")"
		fail "cargohold -e failed: $(tail -n3 "$work/extract.err" | paste -sd ';' -)"
	fi
fi
jset kernels_ok "$kernels_ok"
jset total_s "$(($(date +%s) - T0))"

# --- 6. one JSON object on stdout -----------------------------------------------
"$PY" - "$res" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["ok"] = not d["failures"]
print(json.dumps(d, indent=None, sort_keys=True))
PY
ok=$(jget failures)
if [ "$ok" = "[]" ]; then
	say "OK"
	exit 0
fi
say "FAILED: see \"failures\" in the JSON"
exit 1
