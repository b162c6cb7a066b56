#!/bin/sh
# /init of the vmtest initramfs. Runs as PID 1 under busybox ash: sets up
# the mounts the kernel-facing tests expect on a real host, loads the
# modules run.sh staged, runs every test binary and prints one marker line
# per binary that run.sh parses from the serial console:
#
#   VMTEST-KERNEL <uname -r> (<uname -v>)
#   VMTEST-RESULT <name> PASS|FAIL <exit code> <seconds>
#   VMTEST-DONE
#
# Anything missing (a crash, a hang cut by run.sh's timeout) shows up on the
# host as a binary without a result, so it is never counted as a pass.
export PATH=/bin
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin

# warn reports a setup step that failed; the tests that need it then fail
# or skip with their own message, and the marker says why.
warn() { echo "VMTEST-WARN $*"; }

mount -t sysfs sysfs /sys || warn "mount sysfs"
mount -t devtmpfs devtmpfs /dev || warn "mount devtmpfs"
mount -t tmpfs tmpfs /tmp || warn "mount tmpfs on /tmp"
mount -t bpf bpf /sys/fs/bpf || warn "mount bpffs"
mount -t debugfs debugfs /sys/kernel/debug || warn "mount debugfs"
# tracefs and cgroup2 are optional: tests do not need them today, but the
# kernel's own BPF features probe them and a host always has them.
[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up || warn "lo up"

# Modules in dependency order (run.sh resolved them from modules.dep).
if [ -s /vmtest/modules.list ]; then
	while read -r ko; do
		insmod "/vmtest/modules/$ko" || warn "insmod $ko"
	done </vmtest/modules.list
fi

echo "VMTEST-KERNEL $(uname -r) ($(uname -v))"
echo "VMTEST-INFO cpus=$(nproc) mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)"

# Environment passed through from the host (PREMIRROR_*), one safely
# quoted assignment per line.
[ -f /vmtest/env ] && . /vmtest/env

# Extra test flags, one argument per line (so regexps keep their spaces
# and metacharacters without a second round of shell quoting).
set --
if [ -f /vmtest/args ]; then
	while IFS= read -r a; do set -- "$@" "$a"; done </vmtest/args
fi

uptime_s() { cut -d' ' -f1 /proc/uptime; }

# tests.list: "<name> <directory under /vmtest/src> <kind>" per binary.
# A test binary runs from its package directory, as `go test` does, so
# testdata/ paths resolve; a tool (progcheck) takes no test flags.
while read -r name dir kind; do
	echo "VMTEST-START $name"
	start=$(uptime_s)
	if [ "$kind" = test ]; then
		(cd "/vmtest/src/$dir" && "./$name.test" -test.v "$@")
	else
		(cd "/vmtest/src/$dir" && "./$name")
	fi
	rc=$?
	secs=$(awk -v a="$start" -v b="$(uptime_s)" 'BEGIN { printf "%.1f", b - a }')
	if [ "$rc" = 0 ]; then
		echo "VMTEST-RESULT $name PASS $rc $secs"
	else
		echo "VMTEST-RESULT $name FAIL $rc $secs"
	fi
done </vmtest/tests.list

echo "VMTEST-DONE"
sync
poweroff -f
# poweroff needs ACPI; if it returned, fall back to a reboot, which qemu
# turns into an exit because run.sh passes -no-reboot.
reboot -f
