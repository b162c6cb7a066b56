#!/usr/bin/env bash
# `make vmtest`: runs premirror's kernel-facing test binaries on other
# kernels under qemu (TCG; no KVM needed) and fails if any binary fails on
# any kernel. Usage and knobs: scripts/vmtest/README.md, or run.sh -h.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
# shellcheck source=kernel.sh
. "$here/kernel.sh"

usage() {
	cat <<'EOF'
usage: scripts/vmtest/run.sh [KERNEL...]

KERNEL: cloud-6.1 | cloud-6.12 | a linux-image-* apt package | a .deb |
        a directory with boot/vmlinuz-* and lib/modules/* | a bzImage path
        (default: $VMTEST_KERNELS, or "cloud-6.1 cloud-6.12")

environment:
  VMTEST_PKGS          Go packages to test (default "./internal/maps ./internal/agent")
  VMTEST_PROGCHECK=0   skip progcheck (loads each XDP program, prints the full verifier log)
  VMTEST_RUN           passed as -test.run      VMTEST_SKIP   as -test.skip
  VMTEST_BENCH         passed as -test.bench    VMTEST_BENCHTIME (default 1x with VMTEST_BENCH)
  VMTEST_TESTFLAGS     more test flags, whitespace-separated (e.g. "-test.count=2")
  VMTEST_TEST_TIMEOUT  -test.timeout per binary (default 10m)
  VMTEST_TIMEOUT       wall-clock limit per kernel, boot included (default 25m)
  VMTEST_MEM           guest memory (default 2G)      VMTEST_SMP  vCPUs (default 2)
  VMTEST_MODULES       modules to load (default "veth"); dependencies are added
  VMTEST_MODULES_DIR   lib/modules/<release> for a bare bzImage
  VMTEST_KCONFIG       .config for a bare bzImage (to tell built-in modules)
  VMTEST_CACHE         cache directory (default .cache/vmtest)
  VMTEST_QUIET=1       print only the summary (the full console is always logged)
  VMTEST_KERNEL_LOG=1  keep kernel boot messages on the console (no "quiet")
  VMTEST_APPEND        extra kernel command line
  PREMIRROR_*          passed through to the tests' environment
EOF
}
case "${1:-}" in -h | --help) usage; exit 0 ;; esac

VMTEST_CACHE=${VMTEST_CACHE:-$repo/.cache/vmtest}
pkgs=${VMTEST_PKGS:-./internal/maps ./internal/agent}
mem=${VMTEST_MEM:-2G}
smp=${VMTEST_SMP:-2}
wall=${VMTEST_TIMEOUT:-25m}
modules=${VMTEST_MODULES-veth}
if [ $# -gt 0 ]; then kernels=("$@"); else read -ra kernels <<<"${VMTEST_KERNELS:-cloud-6.1 cloud-6.12}"; fi

log() { echo "vmtest: $*" >&2; }
die() { log "$*"; exit 2; }

# Tools: qemu and a static busybox are the only system packages vmtest
# adds; everything else (kernels) stays in the cache.
ensure_tools() {
	local need=()
	command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
	if ! command -v busybox >/dev/null || ldd "$(command -v busybox)" >/dev/null 2>&1; then
		need+=(busybox-static)
	fi
	[ ${#need[@]} -eq 0 ] && return
	[ "$(id -u)" = 0 ] || die "missing ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
	log "installing ${need[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
		die "apt-get install ${need[*]} failed (apt-get update first?)"
}
ensure_tools
command -v go >/dev/null || die "go not on PATH"
busybox=$(command -v busybox)

work="$VMTEST_CACHE/run"
rm -rf "$work"
mkdir -p "$work/common/bin" "$work/common/vmtest/src" "$VMTEST_CACHE/logs"

# 1. Test binaries, static (the guest has no libc) and stripped (a smaller
# initramfs boots faster under TCG; tracebacks keep their symbols).
names=()
: >"$work/common/vmtest/tests.list"
# progcheck first: it prints the full verifier log of any program the
# guest kernel rejects, where the tests show only its last lines.
if [ "${VMTEST_PROGCHECK:-1}" != 0 ]; then
	dest="$work/common/vmtest/src/scripts/vmtest/progcheck"
	mkdir -p "$dest"
	log "go build ./scripts/vmtest/progcheck"
	CGO_ENABLED=0 go build -ldflags='-s -w' -o "$dest/progcheck" ./scripts/vmtest/progcheck || die "building progcheck failed"
	echo "progcheck scripts/vmtest/progcheck tool" >>"$work/common/vmtest/tests.list"
	names+=(progcheck)
fi
# Patterns such as ./internal/... expand to one binary per package.
# shellcheck disable=SC2086 # a list of packages
dirs=$(go list -f '{{.Dir}}' $pkgs) || die "go list $pkgs failed"
for dir in $dirs; do
	rel=${dir#"$repo"/}
	name=${rel//\//_}
	dest="$work/common/vmtest/src/$rel"
	mkdir -p "$dest"
	log "go test -c ./$rel"
	CGO_ENABLED=0 go test -c -ldflags='-s -w' -o "$dest/$name.test" "./$rel" || die "go test -c ./$rel failed"
	if [ ! -f "$dest/$name.test" ]; then
		log "./$rel has no tests; skipped"
		continue
	fi
	[ -d "$rel/testdata" ] && cp -r "$rel/testdata" "$dest/"
	echo "$name $rel test" >>"$work/common/vmtest/tests.list"
	names+=("$name")
done
[ ${#names[@]} -gt 0 ] || die "no test binaries to run"
# Files tests read from the repository root, found through go.mod above
# their working directory (alerttest: the alert rules).
cp go.mod "$work/common/vmtest/src/"
mkdir -p "$work/common/vmtest/src/deploy"
cp -r deploy/prometheus "$work/common/vmtest/src/deploy/"

# 2. The part of the initramfs every kernel shares.
cp "$busybox" "$work/common/bin/busybox"
ln -s busybox "$work/common/bin/sh"
install -m 0755 "$here/init.sh" "$work/common/init"
{
	echo "-test.timeout=${VMTEST_TEST_TIMEOUT:-10m}"
	[ -n "${VMTEST_RUN:-}" ] && echo "-test.run=$VMTEST_RUN"
	[ -n "${VMTEST_SKIP:-}" ] && echo "-test.skip=$VMTEST_SKIP"
	if [ -n "${VMTEST_BENCH:-}" ]; then
		echo "-test.bench=$VMTEST_BENCH"
		echo "-test.benchtime=${VMTEST_BENCHTIME:-1x}"
	fi
	for f in ${VMTEST_TESTFLAGS:-}; do echo "$f"; done
} >"$work/common/vmtest/args"
# PREMIRROR_* as single-quoted assignments the guest's ash can source.
env | grep -E '^PREMIRROR_[A-Za-z0-9_]*=' | while IFS='=' read -r k v; do
	printf "export %s='%s'\n" "$k" "${v//\'/\'\\\'\'}"
done >"$work/common/vmtest/env" || true

mkcpio() { (cd "$1" && find . | LC_ALL=C sort | busybox cpio -o -H newc -R 0:0 2>/dev/null); }
mkcpio "$work/common" >"$work/common.cpio"

# 3. Per kernel: modules, boot, parse. The summary gets one header line per
# kernel and one line per binary.
summary=()
failed=0
say() { summary+=("$*"); }
result() { say "$(printf '    %-16s %s' "$1" "$2")"; }
for spec in "${kernels[@]}"; do
	label=$(printf '%s' "$spec" | tr -c 'A-Za-z0-9._+-' '_')
	klog="$VMTEST_CACHE/logs/$label.log"
	kstart=$(date +%s)
	if ! resolve_kernel "$spec"; then
		say "$spec: FAIL, kernel not available (see the messages above)"
		failed=1
		continue
	fi
	kw="$work/k-$label"
	mkdir -p "$kw/vmtest/modules"
	: >"$kw/vmtest/modules.list"
	mods=()
	if [ -n "$modules" ]; then
		# shellcheck disable=SC2086 # a list of names
		if ! modlist=$(resolve_modules $modules); then
			say "$spec ${KVER:-}: FAIL, a module the tests need is missing (see above)"
			failed=1
			continue
		fi
		[ -z "$modlist" ] || mapfile -t mods <<<"$modlist"
	fi
	for m in "${mods[@]}"; do
		ko=${m##*/}
		ko=${ko%%.ko*}.ko
		stage_module "$m" "$kw/vmtest/modules/$ko" || die "staging $m failed"
		echo "$ko" >>"$kw/vmtest/modules.list"
	done
	# The kernel unpacks concatenated newc archives in order, so the shared
	# part is built once and each kernel appends only its modules.
	mkcpio "$kw" >"$kw/modules.cpio"
	cat "$work/common.cpio" "$kw/modules.cpio" >"$kw/initramfs.cpio"

	append="console=ttyS0 panic=-1 ${VMTEST_APPEND:-}"
	[ -n "${VMTEST_KERNEL_LOG:-}" ] || append="quiet $append"
	log "booting $spec (${KVER:-unknown release}; modules: ${mods[*]:-none}; $mem, $smp vCPUs; limit $wall)"
	qemu=(qemu-system-x86_64 -nographic -no-reboot -net none
		-accel tcg -cpu max -m "$mem" -smp "$smp"
		-kernel "$KIMAGE" -initrd "$kw/initramfs.cpio" -append "$append")
	set +e
	if [ -n "${VMTEST_QUIET:-}" ]; then
		timeout -k 10 "$wall" "${qemu[@]}" </dev/null >"$klog" 2>&1
		qrc=$?
	else
		# SeaBIOS writes terminal resets and colours to the serial port;
		# keep them out of the user's terminal (the log keeps everything).
		timeout -k 10 "$wall" "${qemu[@]}" </dev/null 2>&1 | tee "$klog" |
			sed -u -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\r$//'
		qrc=${PIPESTATUS[0]}
	fi
	set -e
	secs=$(($(date +%s) - kstart))

	# Serial output arrives with CRLF line ends.
	console=$(tr -d '\r' <"$klog")
	kver=$(sed -n 's/^.*VMTEST-KERNEL //p' <<<"$console" | head -n1)
	[ -n "$kver" ] || kver="${KVER:-?} (did not reach init)"
	how="${secs}s wall, boot included"
	[ "$qrc" != 124 ] || how="$how; cut at the $wall limit"
	say "$spec: $kver; $how"
	for name in "${names[@]}"; do
		res=$(grep -o "VMTEST-RESULT $name [A-Z]* [0-9]* [0-9.]*" <<<"$console" | head -n1 || true)
		if [ -n "$res" ]; then
			read -r _ _ verdict rc t <<<"$res"
			if [ "$verdict" = PASS ]; then
				result "$name" "PASS ${t}s"
				continue
			fi
			# Name what failed: top-level "--- FAIL:" tests (a failed
			# subtest fails its parent), or progcheck's rejected programs.
			fails=$(awk -v n="$name" '$0 ~ "VMTEST-START " n "$" {on=1; next}
				on && /VMTEST-RESULT/ {on=0}
				on && /^--- FAIL: / {printf " %s", $3}
				on && /^VMTEST-PROG [^ ]* FAIL/ {printf " %s", $2}' <<<"$console")
			result "$name" "FAIL ${t}s, exit $rc:${fails:- no --- FAIL line, see the log}"
		elif grep -q "VMTEST-START $name\$" <<<"$console"; then
			if [ "$qrc" = 124 ]; then
				result "$name" "FAIL: still running at the $wall limit"
			else
				result "$name" "FAIL: the guest died while it ran (qemu exit $qrc)"
			fi
		else
			result "$name" "FAIL: never started (qemu exit $qrc)"
		fi
		failed=1
	done
	grep -q "VMTEST-DONE" <<<"$console" || failed=1
	grep -o 'VMTEST-WARN .*' <<<"$console" | while read -r _ w; do echo "    setup: $w"; done >"$kw/warns" || true
	while IFS= read -r w; do say "$w"; done <"$kw/warns"
	say "    console: ${klog#"$repo"/}"
done

echo
echo "== vmtest summary"
printf '%s\n' "${summary[@]}"
exit $failed
