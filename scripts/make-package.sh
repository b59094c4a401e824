#!/bin/sh
# Builds the release artefacts from an already built flanneld-xdp binary (the Makefile's `dist` and
# `package` targets call this; the packaging test too, with the test build's binary):
#
#   <out>/flanneld-xdp_<version>_<debian arch>.deb     dpkg-deb, installs under /usr and /etc/default
#   <out>/flanneld-xdp-<version>-linux-<machine>.tar.gz the same tree, to unpack at / (no dpkg)
#
# Usage: scripts/make-package.sh BIN_DIR OUT_DIR
# The tree is `make install-files DESTDIR=… PREFIX=/usr` (binary, BPF objects, unit, script, man
# page, shell completions, docs) plus what a package adds: the conffile /etc/default/flanneld-xdp,
# copyright and changelog.
set -eu

bin_dir=$1
out=$2
root_dir=$(cd "$(dirname "$0")/.." && pwd)
binary="$bin_dir/flanneld-xdp"

[ -x "$binary" ] || { echo "make-package.sh: no executable $binary: build it first (make dist)" >&2; exit 1; }
# The package promises a binary that runs without the Swift toolchain: refuse one that needs it.
if objdump -p "$binary" | grep -q 'NEEDED.*libswift\|NEEDED.*libFoundation'; then
	echo "make-package.sh: $binary links the Swift runtime dynamically; build it with the Makefile's STATIC_SWIFT flags" >&2
	exit 1
fi

version=$("$binary" --version)
arch=$(dpkg --print-architecture)
machine=$(uname -m)
stage="$out/stage"
tree="$stage/root"
rm -rf "$stage"
mkdir -p "$tree" "$out"

make -C "$root_dir" --no-print-directory install-files BIN_DIR="$bin_dir" DESTDIR="$tree" PREFIX=/usr
# The programs' symbols are for debugging the build; the BPF objects keep theirs (bpftool reads BTF).
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$tree/usr/bin/flanneld-xdp"

install -D -m 0644 "$root_dir/contrib/sysconfig/flanneld-xdp" "$tree/etc/default/flanneld-xdp"
# bash-completion sources the file: argument-parser's "#!/bin/bash" line has no use there.
sed -i '1{/^#!/d}' "$tree/usr/share/bash-completion/completions/flanneld-xdp"
# The BPF object is eBPF bytecode (the kernel's architecture, not the host's), shipped on purpose
# beside the binary for bpftool and --bpf-object; lintian's architecture check does not apply.
install -D -m 0644 "$root_dir/contrib/debian/lintian-overrides" "$tree/usr/share/lintian/overrides/flanneld-xdp"
gzip -9n "$tree/usr/share/man/man8/flanneld-xdp.8"
install -m 0644 "$root_dir/contrib/debian/copyright" "$tree/usr/share/doc/flanneld-xdp/copyright"
gzip -9n < "$root_dir/contrib/debian/changelog" > "$tree/usr/share/doc/flanneld-xdp/changelog.gz"
find "$tree" -type d -exec chmod 0755 {} +

# The Debian control files.
mkdir -p "$tree/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
	"$root_dir/contrib/debian/control" > "$tree/DEBIAN/control"
echo /etc/default/flanneld-xdp > "$tree/DEBIAN/conffiles"
(cd "$tree" && find usr -type f -exec md5sum {} + | sort -k2) > "$tree/DEBIAN/md5sums"
chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/conffiles" "$tree/DEBIAN/md5sums"

deb="$out/flanneld-xdp_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb" >/dev/null

tarball="$out/flanneld-xdp-${version}-linux-${machine}.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --exclude=./DEBIAN -C "$tree" -czf "$tarball" .

rm -rf "$stage"
echo "$deb"
echo "$tarball"
