#!/usr/bin/env bash
# The set-up step of `make test` (make test-deps runs it alone). The tests that
# prove the product drive a real registry and real FUSE mounts, and skip where
# their tools are absent; a README test run must not end green without them.
# So: as root on Debian/Ubuntu, install the missing apt packages and open
# /dev/fuse as distributions do. Where that cannot be done (not root, no
# apt-get, no /dev/fuse, ...), change nothing and stop with one message that
# names the command to run. ALLOW_SKIP=1 turns the stop into a warning: nothing
# is installed and the tests that need what is missing skip.
set -euo pipefail
cd "$(dirname "$0")/.."

go=${GO:-go}
allow_skip=${ALLOW_SKIP:-}
root=false
[ "$(id -u)" = 0 ] && root=true

pkgs=()    # apt packages to install
missing=() # what is missing, one line each
blocked=() # what this script cannot fix, one line each

need() { # need PACKAGE WHAT: WHAT is missing, apt package PACKAGE brings it
	pkgs+=("$1")
	missing+=("$2 (apt package $1)")
}

command -v "$go" >/dev/null ||
	blocked+=("no '$go' on PATH: Go 1.26 from https://go.dev/dl (sudo resets PATH; keep it with sudo env \"PATH=\$PATH\" ...)")
command -v git >/dev/null || need git "git: make lint lists the files"
command -v fusermount3 >/dev/null || need fuse3 "fusermount3: unprivileged FUSE mounts"
# The registry harness takes $CARGOHOLD_REGISTRY_BIN, else docker-registry
# (Debian's name) or registry (upstream's).
if [ -n "${CARGOHOLD_REGISTRY_BIN:-}" ]; then
	command -v "$CARGOHOLD_REGISTRY_BIN" >/dev/null ||
		blocked+=("CARGOHOLD_REGISTRY_BIN=$CARGOHOLD_REGISTRY_BIN is not a command")
elif ! command -v docker-registry >/dev/null && ! command -v registry >/dev/null; then
	need docker-registry "docker-registry: the real registry the tests push to"
fi
command -v skopeo >/dev/null || need skopeo "skopeo: copies images for the registry tests"
command -v strace >/dev/null || need strace "strace: checks the replay against CPython"
command -v python3 >/dev/null || need python3 "python3: the replay check and test/gpu/e2e.sh"
# cgo builds and the dlopen test compile C: gcc, and libc headers, which
# --no-install-recommends does not bring with gcc.
if ! command -v gcc >/dev/null; then
	need gcc "gcc: cgo builds, the dlopen test"
	pkgs+=(libc6-dev)
elif ! printf '#include <stdio.h>\nint main(void){return 0;}\n' | gcc -x c -o /dev/null - 2>/dev/null; then
	need libc6-dev "C library headers: gcc cannot build a C program"
fi

# Mounts (FUSE as root, tmpfs for the full-disk test) and switching to an
# unprivileged user need root with CAP_SYS_ADMIN.
if ! $root; then
	blocked+=("not root: the tests mount FUSE and tmpfs as root and switch users${pkgs:+; installing packages needs root}")
elif ! (( 0x$(awk '/^CapEff:/ { print $2 }' /proc/self/status) & (1 << 21) )); then
	blocked+=("no CAP_SYS_ADMIN: mounts fail (a container needs --privileged, or --cap-add SYS_ADMIN --device /dev/fuse)")
fi
if [ ! -c /dev/fuse ]; then
	blocked+=("no /dev/fuse (a container needs --device /dev/fuse)")
fi
[ -d ../shared/testdata/triton-cache ] || blocked+=("no shared test data at $(dirname "$PWD")/shared/testdata/triton-cache (real Triton caches the tests read)")
if [ ${#pkgs[@]} -gt 0 ] && $root && ! command -v apt-get >/dev/null; then
	blocked+=("no apt-get: install ${pkgs[*]} (Debian's names) with this system's package manager")
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#blocked[@]} -gt 0 ]; then
	if [ "$allow_skip" = 1 ]; then
		{
			echo "test-setup: WARNING: ALLOW_SKIP=1: the tests that need these SKIP (go test -v shows them):"
			printf '  - %s\n' "${missing[@]}" "${blocked[@]}"
		} >&2
		exit 0
	fi
	if [ ${#blocked[@]} -gt 0 ]; then
		{
			echo "test-setup: cannot run every test on this machine:"
			printf '  - %s\n' "${missing[@]}" "${blocked[@]}"
			if $root; then
				echo "Fix the above, then run: make test"
			else
				how="Run as root"
				[ ${#blocked[@]} -eq 1 ] || how="Fix the rest, then run as root"
				[ ${#pkgs[@]} -eq 0 ] || how+=" (it installs ${pkgs[*]}, then runs every test)"
				echo "$how:  sudo env \"PATH=\$PATH\" make test"
			fi
			echo "Or run anyway and let the tests that need these skip:  make test ALLOW_SKIP=1"
		} >&2
		exit 1
	fi
fi

if [ ${#pkgs[@]} -gt 0 ]; then
	echo "test-setup: installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# The Debian docker-registry package may start a registry on :5000; the
	# tests start their own on free ports, so it is harmless.
	apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
# Distributions make /dev/fuse 0666 (udev) so that users mount through the
# setuid fusermount3; some containers leave it 0600. The unprivileged-mount
# test needs the usual mode.
if [ "$(stat -c %a /dev/fuse)" != 666 ]; then
	echo "test-setup: chmod 0666 /dev/fuse (as distributions set it)"
	chmod 0666 /dev/fuse
fi
