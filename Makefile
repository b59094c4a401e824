# flanneld-xdp — the project's verbs. Run as root: tests and the demo create network namespaces and
# load BPF programs. `make deps` installs Debian packages the first time (apt-get), nothing after;
# only the verbs that need the test tools call it (`make install` and `make dist` never do).

SWIFT      ?= swift
PREFIX     ?= /usr/local
CONFIG     ?= debug
BPF_CLANG  ?= $(shell command -v /opt/swift/usr/bin/clang 2>/dev/null || command -v clang)
MULTIARCH  := $(shell gcc -print-multiarch 2>/dev/null || echo $$(uname -m)-linux-gnu)
# The compile flags live in bpf/cflags, read by this file, the build plugin's script and the tests.
BPF_CFLAGS := $(shell cat bpf/cflags) -ISources/CBPF/include -Ibpf -I/usr/include/$(MULTIARCH)
BPF_SRCS   := $(wildcard bpf/*.bpf.c)
BPF_OBJS   := $(patsubst bpf/%.bpf.c,build/bpf/%.bpf.o,$(BPF_SRCS))
BPF_HDRS   := $(wildcard bpf/*.h) Sources/CBPF/include/fxdp_shared.h bpf/cflags

# Debian packages the build, the tests, the demo and the bench use (lintian: the packaging test
# checks the .deb with it).
DEB_PACKAGES := libbpf-dev libelf-dev libmnl-dev zlib1g-dev clang llvm bpftool iproute2 etcd-server \
                etcd-client iperf3 tcpdump openssl libcap2-bin procps kmod iputils-ping nftables iptables \
                lintian

# The daemon links the Swift runtime statically, so it runs on nodes without the toolchain.
# FoundationEssentials (pulled in by dependencies) needs its C shims and collections, which
# SwiftPM does not add to a static link by itself.
STATIC_SWIFT := --static-swift-stdlib -Xlinker -l_FoundationCShims -Xlinker -l_FoundationCollections

# Where `make dist` and `make package` write the .deb and the tarball; the man page and the shell
# completions are generated from the binary's own help into build/doc.
DIST_DIR   ?= build/dist
GEN_DIR    := build/doc
GEN_MANUAL := .build/tools/argument-parser/debug/generate-manual

.PHONY: all deps build bpf test demo bench soak fuzz install install-files dist package generated-docs clean cleanup-lab

all: build

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

bpf: $(BPF_OBJS)

build/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS)
	@mkdir -p $(dir $@)
	$(BPF_CLANG) $(BPF_CFLAGS) -c $< -o $@

build: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c $(CONFIG)
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c $(CONFIG) --product flanneld-xdp $(STATIC_SWIFT)

# The tests run the daemon binary as it ships: relinked with the Swift runtime inside (a link
# step only; the test bundle itself keeps the toolchain's shared runtime, as XCTest needs).
test: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build --build-tests
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build --product flanneld-xdp $(STATIC_SWIFT)
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) test --skip-build $(if $(FILTER),--filter $(FILTER),)

demo: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product fxdp-demo
	$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)/fxdp-demo

# Full run: rewrites the figures in BENCHMARKS.md. QUICK=1: the everyday run (< 3 min), results in
# bench-results/ only. PARTS= runs only some parts (datapath, control-plane, daemon, etcd-load),
# PEERS= other peer counts, both into bench-results/ only: `make bench PARTS=daemon PEERS=100,50000`
# measures the daemon's memory alone. BENCH_ARGS passes more options (see `fxdp-bench --help`).
# The daemon measured is the one that ships: relinked with the Swift runtime inside (`make dist`).
bench: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp $(STATIC_SWIFT)
	$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)/fxdp-bench \
	  $(if $(QUICK),--quick,$(if $(PARTS)$(PEERS),,--update-doc BENCHMARKS.md)) \
	  $(if $(PARTS),--parts $(PARTS),) $(if $(PEERS),--peers $(PEERS),) $(BENCH_ARGS)

# The churn soak (not part of `make test` or `make bench`): SOAK_MINUTES of lease adds, changes and
# removals at 20/s against the shipped daemon; RSS, open fds and the map must stay flat and the
# tables equal etcd at the end. Results in bench-results/soak.{json,md}; exits non-zero on failure.
SOAK_MINUTES ?= 30
soak: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp $(STATIC_SWIFT)
	$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)/fxdp-bench \
	  --parts soak --soak-minutes $(SOAK_MINUTES) --output bench-results/soak.json $(BENCH_ARGS)

# Long hostile-input runs (1 000 000 packets through the BPF programs against the reference model,
# 120 000 inputs per etcd-data parser) and the cluster fault tests with a 60 s etcd outage.
# FXDP_FUZZ_SEED=<n> replays a failing run (the seed is in every failure message).
fuzz: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build --build-tests
	FXDP_FUZZ_LONG=1 BPF_CLANG=$(BPF_CLANG) $(SWIFT) test --skip-build --filter 'Fuzz|ClusterFaultTests'

# `make install [PREFIX=/usr/local] [DESTDIR=/tmp/stage]`: a release build, then install-files.
# Installs nothing with apt: building needs the build packages (`make deps` once on a build host);
# nodes take the .deb or the tarball of `make dist` instead.
install: bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp $(STATIC_SWIFT)
	$(MAKE) install-files BIN_DIR="$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)"

# Puts an already built binary (BIN_DIR) and everything around it in place: the binary, the BPF
# objects (the binary embeds its own copy; these are for bpftool and inspection), the systemd unit
# with PREFIX's paths, mk-docker-opts.sh, the man page, the shell completions, the sysconfig
# example and the docs. /etc is not written: copy the sysconfig example to /etc/default/flanneld-xdp
# (or /etc/sysconfig/flanneld-xdp) yourself (it holds your etcd address).
BIN_DIR ?= .build/release
install-files: bpf generated-docs
	@test -x "$(BIN_DIR)/flanneld-xdp" || { echo "no $(BIN_DIR)/flanneld-xdp: run make install, or give BIN_DIR=" >&2; exit 1; }
	install -D -m 0755 $(BIN_DIR)/flanneld-xdp $(DESTDIR)$(PREFIX)/bin/flanneld-xdp
	install -d $(DESTDIR)$(PREFIX)/lib/flanneld-xdp
	install -m 0644 $(BPF_OBJS) $(DESTDIR)$(PREFIX)/lib/flanneld-xdp/
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/local|$(PREFIX)|g' contrib/systemd/flanneld-xdp.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/flanneld-xdp.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/flanneld-xdp.service
	install -D -m 0755 contrib/mk-docker-opts.sh $(DESTDIR)$(PREFIX)/libexec/flanneld-xdp/mk-docker-opts.sh
	install -D -m 0644 $(GEN_DIR)/flanneld-xdp.8 $(DESTDIR)$(PREFIX)/share/man/man8/flanneld-xdp.8
	install -D -m 0644 $(GEN_DIR)/flanneld-xdp.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/flanneld-xdp
	install -D -m 0644 $(GEN_DIR)/flanneld-xdp.zsh $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_flanneld-xdp
	install -D -m 0644 $(GEN_DIR)/flanneld-xdp.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/flanneld-xdp.fish
	install -D -m 0644 contrib/sysconfig/flanneld-xdp $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/examples/sysconfig-flanneld-xdp
	install -D -m 0644 contrib/cni/10-flannel.conflist $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/examples/10-flannel.conflist
	install -D -m 0644 contrib/grafana/flanneld-xdp.json $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/examples/grafana-flanneld-xdp.json
	install -D -m 0644 contrib/prometheus/flanneld-xdp.rules.yml $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/examples/prometheus-flanneld-xdp.rules.yml
	install -m 0644 docs/OPERATIONS.md docs/DESIGN.md docs/SECURITY.md $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/

# The man page (argument-parser's generate-manual, built from the resolved checkout: no network)
# and the bash/zsh/fish completions, from BIN_DIR's binary: they always match its flags.
generated-docs:
	@test -x "$(BIN_DIR)/flanneld-xdp" || { echo "no $(BIN_DIR)/flanneld-xdp: build it first, or give BIN_DIR=" >&2; exit 1; }
	@mkdir -p $(GEN_DIR)
	@test -x $(GEN_MANUAL) || $(SWIFT) build --package-path .build/checkouts/swift-argument-parser \
	  --scratch-path .build/tools/argument-parser --product generate-manual >/dev/null
	$(GEN_MANUAL) $(BIN_DIR)/flanneld-xdp --section 8 --date 2026-12-03 --output-directory $(GEN_DIR)
	for shell in bash zsh fish; do \
	  $(BIN_DIR)/flanneld-xdp --generate-completion-script $$shell > $(GEN_DIR)/flanneld-xdp.$$shell || exit 1; \
	done

# `make dist`: the release binary (Swift runtime linked in), then `make package`: a .deb (dpkg-deb)
# and a tarball of the same tree in DIST_DIR. `make package BIN_DIR=…` packages a binary built
# elsewhere (the packaging test packages the test build's).
dist: bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp $(STATIC_SWIFT)
	$(MAKE) package BIN_DIR="$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)"

package: bpf
	scripts/make-package.sh "$(BIN_DIR)" "$(DIST_DIR)"

clean:
	rm -rf build .build
