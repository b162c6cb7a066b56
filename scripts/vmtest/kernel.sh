# Sourced by run.sh: turns a kernel spec into an image, a modules tree and
# a config, fetching Debian kernels with apt into the cache when needed.
#
# After resolve_kernel SPEC these are set:
#   KIMAGE   bootable bzImage (vmlinuz)
#   KVER     the kernel release the image reports (uname -r), when known
#   KMODDIR  lib/modules/<release> with a modules.dep, or empty
#   KCONFIG  the kernel's .config, or empty
# Errors go to stderr and resolve_kernel returns non-zero.

# Short names for the kernels run.sh tests by default. Anything else that
# starts with linux-image- is taken as an apt package name.
kernel_alias() {
	case "$1" in
	cloud-6.1) echo linux-image-cloud-amd64 ;;      # bookworm's own 6.1
	cloud-6.12) echo linux-image-6.12-cloud-amd64 ;; # bookworm-security 6.12
	*) echo "$1" ;;
	esac
}

# apt_image_package follows meta-packages (linux-image-cloud-amd64 →
# linux-image-6.1.0-NN-cloud-amd64) down to the package holding /boot/vmlinuz.
apt_image_package() {
	local pkg=$1 dep i
	if ! apt-cache show "$pkg" >/dev/null 2>&1; then
		echo "vmtest: apt knows no package $pkg (run apt-get update; apt-cache search linux-image- lists them)" >&2
		return 1
	fi
	for i in 1 2 3 4; do
		dep=$(apt-cache depends "$pkg" 2>/dev/null |
			awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
		[ -n "$dep" ] || break
		pkg=$dep
	done
	echo "$pkg"
}

# fetch_deb PKG: the candidate version's .deb in $VMTEST_CACHE/debs, downloaded
# once. Prints its path.
fetch_deb() {
	local pkg=$1 ver file tmp
	ver=$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" { print $2 }')
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		echo "vmtest: apt has no installable version of $pkg" >&2
		return 1
	fi
	mkdir -p "$VMTEST_CACHE/debs"
	# apt-get download encodes an epoch's ':' as %3a in the file name.
	file="$VMTEST_CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
	if [ ! -s "$file" ]; then
		tmp=$(mktemp -d "$VMTEST_CACHE/debs/.dl.XXXXXX")
		local sandbox=()
		# As root apt drops to _apt for downloads and warns when that user
		# cannot write the directory; the cache is root's, so say so.
		[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
		echo "vmtest: apt-get download $pkg=$ver" >&2
		if ! (cd "$tmp" && apt-get -q "${sandbox[@]}" download "$pkg=$ver" >&2); then
			rm -rf "$tmp"
			echo "vmtest: apt-get download $pkg=$ver failed" >&2
			return 1
		fi
		mv "$tmp"/*.deb "$file"
		rm -rf "$tmp"
	fi
	echo "$file"
}

# extract_deb DEB: unpacked once into $VMTEST_CACHE/kernels/<deb name>, with
# a modules.dep generated (Debian's packages leave that to depmod at install
# time). Prints the root directory.
extract_deb() {
	local deb=$1 name root tmp rel
	name=$(basename "$deb" .deb)
	root="$VMTEST_CACHE/kernels/$name"
	if [ ! -f "$root/.vmtest-ok" ]; then
		mkdir -p "$VMTEST_CACHE/kernels"
		rm -rf "$root"
		tmp=$(mktemp -d "$VMTEST_CACHE/kernels/.x.XXXXXX")
		dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; echo "vmtest: dpkg-deb -x $deb failed" >&2; return 1; }
		for rel in "$tmp"/lib/modules/*; do
			[ -d "$rel" ] && busybox depmod -b "$tmp" "$(basename "$rel")"
		done
		touch "$tmp/.vmtest-ok"
		mv "$tmp" "$root"
	fi
	echo "$root"
}

# use_root DIR: a tree laid out like an installed kernel package
# (boot/vmlinuz-<release>, lib/modules/<release>).
use_root() {
	local root=$1 images
	images=("$root"/boot/vmlinuz-*)
	if [ ! -f "${images[0]}" ]; then
		echo "vmtest: no boot/vmlinuz-* under $root" >&2
		return 1
	fi
	if [ ${#images[@]} -gt 1 ]; then
		echo "vmtest: several kernels under $root/boot; give the image path instead" >&2
		return 1
	fi
	KIMAGE=${images[0]}
	KVER=${KIMAGE##*/vmlinuz-}
	KCONFIG="$root/boot/config-$KVER"
	[ -f "$KCONFIG" ] || KCONFIG=
	KMODDIR="$root/lib/modules/$KVER"
	if [ ! -d "$KMODDIR" ]; then
		KMODDIR=
	elif [ ! -f "$KMODDIR/modules.dep" ]; then
		echo "vmtest: generating $KMODDIR/modules.dep" >&2
		busybox depmod -b "$root" "$KVER" || return 1
	fi
}

# image_release IMAGE: the release string an x86 bzImage carries in its
# setup header (the 16-bit pointer at 0x20e, relative to 0x200), which is
# what uname -r will print. Fails for anything that is not a bzImage.
image_release() {
	local img=$1 magic off
	magic=$(dd if="$img" bs=1 skip=514 count=4 status=none 2>/dev/null)
	if [ "$magic" != HdrS ]; then
		echo "vmtest: $img is not an x86 bzImage (no HdrS setup header)" >&2
		return 1
	fi
	off=$(od -An -tu2 -j 526 -N2 "$img" | tr -d ' ')
	dd if="$img" bs=1 skip=$((off + 512)) count=256 status=none | tr '\0' '\n' | head -n1 | cut -d' ' -f1
}

resolve_kernel() {
	local spec pkg deb root
	spec=$(kernel_alias "$1")
	KIMAGE= KVER= KMODDIR= KCONFIG=
	case "$spec" in
	*/* | *.deb)
		if [ -d "$spec" ]; then
			use_root "$spec"
		elif [ -f "$spec" ] && [[ $spec == *.deb ]]; then
			root=$(extract_deb "$spec") && use_root "$root"
		elif [ -f "$spec" ]; then
			# A bare image (a kernel build's arch/x86/boot/bzImage):
			# modules, if any are needed, come from VMTEST_MODULES_DIR.
			KIMAGE=$spec
			KVER=$(image_release "$spec") || return 1
			KMODDIR=${VMTEST_MODULES_DIR:-}
			KCONFIG=${VMTEST_KCONFIG:-}
			if [ -n "$KMODDIR" ] && [ ! -f "$KMODDIR/modules.dep" ]; then
				echo "vmtest: $KMODDIR has no modules.dep (run depmod -b for it)" >&2
				return 1
			fi
		else
			echo "vmtest: no such kernel: $spec" >&2
			return 1
		fi
		;;
	linux-image-*)
		pkg=$(apt_image_package "$spec") || return 1
		deb=$(fetch_deb "$pkg") || return 1
		root=$(extract_deb "$deb") || return 1
		use_root "$root"
		;;
	*)
		echo "vmtest: unknown kernel spec $1 (cloud-6.1, cloud-6.12, a linux-image-* package, a .deb, a directory or an image path)" >&2
		return 1
		;;
	esac
}

# resolve_modules NAME...: prints the module files (relative to KMODDIR) to
# load, dependencies first, one per line. Built-in modules print nothing.
# Fails naming the module the kernel has in neither form.
resolve_modules() {
	local -A path_of=() deps_of=() seen=()
	local line mod name want
	local order=()
	if [ -n "$KMODDIR" ]; then
		while IFS= read -r line; do
			mod=${line%%:*}
			name=${mod##*/}
			name=${name%%.ko*}
			path_of[${name//-/_}]=$mod
			deps_of[$mod]=${line#*:}
		done <"$KMODDIR/modules.dep"
	fi
	visit() {
		local p=$1 d
		[ -n "${seen[$p]:-}" ] && return
		seen[$p]=1
		for d in ${deps_of[$p]}; do visit "$d"; done
		order+=("$p")
	}
	for want in "$@"; do
		name=${want//-/_}
		if [ -n "${path_of[$name]:-}" ]; then
			visit "${path_of[$name]}"
		elif builtin_module "$name"; then
			continue
		else
			echo "vmtest: kernel ${KVER:-$KIMAGE} has no module $want (not built in, not in ${KMODDIR:-a modules tree})" >&2
			return 1
		fi
	done
	[ ${#order[@]} -eq 0 ] || printf '%s\n' "${order[@]}"
}

# builtin_module NAME: true when modules.builtin lists it, or, lacking a
# modules tree, when the config sets the option that usually builds it
# (CONFIG_<NAME>=y). Without either we cannot tell and assume built in: the
# tests then fail with the kernel's own error if it is not.
builtin_module() {
	local name=$1
	if [ -n "$KMODDIR" ] && [ -f "$KMODDIR/modules.builtin" ]; then
		sed 's/-/_/g' "$KMODDIR/modules.builtin" | grep -q "/${name}\.ko\$"
		return
	fi
	if [ -n "$KCONFIG" ]; then
		grep -qi "^CONFIG_${name}=y" "$KCONFIG"
		return
	fi
	echo "vmtest: cannot tell whether $name is built into $KIMAGE; assuming it is" >&2
	return 0
}

# stage_module REL DEST: copies one module, decompressed (busybox insmod in
# the guest loads plain .ko files only).
stage_module() {
	local src="$KMODDIR/$1" dest=$2
	case "$src" in
	*.ko) cp "$src" "$dest" ;;
	*.ko.xz) busybox xz -dc "$src" >"$dest" ;;
	*.ko.gz) busybox gzip -dc "$src" >"$dest" ;;
	*.ko.zst)
		if ! command -v zstd >/dev/null; then
			echo "vmtest: $src is zstd-compressed and zstd is not installed" >&2
			return 1
		fi
		zstd -qdc "$src" >"$dest"
		;;
	*)
		echo "vmtest: unknown module format: $src" >&2
		return 1
		;;
	esac
}
