# flanneld-xdp — the project's verbs. Run as root: tests and the demo create network namespaces and
# load BPF programs. `make deps` installs Debian packages the first time (apt-get), nothing after.

SWIFT      ?= swift
PREFIX     ?= /usr/local
CONFIG     ?= debug
BPF_CLANG  ?= $(shell command -v /opt/swift/usr/bin/clang 2>/dev/null || command -v clang)
MULTIARCH  := $(shell gcc -print-multiarch 2>/dev/null || echo $$(uname -m)-linux-gnu)
BPF_CFLAGS := -target bpf -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter \
              -ISources/CBPF/include -Ibpf -I/usr/include/$(MULTIARCH)
BPF_SRCS   := $(wildcard bpf/*.bpf.c)
BPF_OBJS   := $(patsubst bpf/%.bpf.c,build/bpf/%.bpf.o,$(BPF_SRCS))
BPF_HDRS   := $(wildcard bpf/*.h) Sources/CBPF/include/fxdp_shared.h

# Debian packages the build, the tests, the demo and the bench use.
DEB_PACKAGES := libbpf-dev libelf-dev libmnl-dev zlib1g-dev clang llvm bpftool iproute2 etcd-server \
                etcd-client iperf3 tcpdump openssl libcap2-bin procps kmod iputils-ping nftables iptables

.PHONY: all deps build bpf test demo bench fuzz install install-files clean cleanup-lab

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

test: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build --build-tests
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) test --skip-build $(if $(FILTER),--filter $(FILTER),)

demo: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product fxdp-lab
	$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)/fxdp-lab demo

# Full run: rewrites the figures in BENCHMARKS.md. QUICK=1: the everyday run (< 3 min), results in
# bench-results/ only. BENCH_ARGS passes more options (see `fxdp-lab bench --help`).
bench: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release
	$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)/fxdp-lab bench \
	  $(if $(QUICK),--quick,--update-doc BENCHMARKS.md) $(BENCH_ARGS)

# Long hostile-input runs (1 000 000 packets through the BPF programs against the reference model,
# 120 000 inputs per etcd-data parser) and the cluster fault tests with a 60 s etcd outage.
# FXDP_FUZZ_SEED=<n> replays a failing run (the seed is in every failure message).
fuzz: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build --build-tests
	FXDP_FUZZ_LONG=1 BPF_CLANG=$(BPF_CLANG) $(SWIFT) test --skip-build --filter 'Fuzz|ClusterFaultTests'

# `make install [PREFIX=/usr/local] [DESTDIR=/tmp/stage]`: a release build, then install-files.
install: deps bpf
	BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --product flanneld-xdp
	$(MAKE) install-files BIN_DIR="$$(BPF_CLANG=$(BPF_CLANG) $(SWIFT) build -c release --show-bin-path)"

# Puts an already built binary (BIN_DIR) and everything around it in place: the binary, the BPF
# objects (the binary embeds its own copy; these are for bpftool and inspection), the systemd unit
# with PREFIX's paths, mk-docker-opts.sh, the sysconfig example and the docs. /etc is not written:
# copy the sysconfig example to /etc/sysconfig/flanneld-xdp yourself (it holds your etcd address).
BIN_DIR ?= .build/release
install-files: bpf
	@test -x "$(BIN_DIR)/flanneld-xdp" || { echo "no $(BIN_DIR)/flanneld-xdp: run make install, or give BIN_DIR=" >&2; exit 1; }
	install -D -m 0755 $(BIN_DIR)/flanneld-xdp $(DESTDIR)$(PREFIX)/bin/flanneld-xdp
	install -d $(DESTDIR)$(PREFIX)/lib/flanneld-xdp
	install -m 0644 $(BPF_OBJS) $(DESTDIR)$(PREFIX)/lib/flanneld-xdp/
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/local|$(PREFIX)|g' contrib/systemd/flanneld-xdp.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/flanneld-xdp.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/flanneld-xdp.service
	install -D -m 0755 contrib/mk-docker-opts.sh $(DESTDIR)$(PREFIX)/libexec/flanneld-xdp/mk-docker-opts.sh
	install -D -m 0644 contrib/sysconfig/flanneld-xdp $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/examples/sysconfig-flanneld-xdp
	install -D -m 0644 contrib/cni/10-flannel.conflist $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/examples/10-flannel.conflist
	install -m 0644 docs/OPERATIONS.md docs/DESIGN.md $(DESTDIR)$(PREFIX)/share/doc/flanneld-xdp/

clean:
	rm -rf build .build
