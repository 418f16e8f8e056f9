# pycri: the two commands a fresh Debian 12 machine (as root) needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the daemon and its tests need (CNI plugins, a real registry, test image tools, reference runtimes,
# systemd: the tests of the systemd cgroup driver boot one in namespaces of its own).
APT_PACKAGES := python3-venv gcc libc6-dev iproute2 iptables containernetworking-plugins docker-registry \
	busybox-static skopeo containerd runc crun sqlite3 systemd

.PHONY: deps venv proto initc images wheels run test node-test install clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# The CRI stubs are generated from proto/api.proto, never committed (tests check they match the proto).
proto: venv
	$(PY) -m pycri.api.generate

# The container child's fast path (runtime/launch/fastinit.py): a static C program, built here, never committed.
initc: runtime/launch/initc/pycri-init

runtime/launch/initc/pycri-init: runtime/launch/initc/pycri-init.c
	gcc -static -O2 -s -o $@ $<

images: venv
	$(PY) hack/build_test_images.py

# pycri's dependencies as wheels (.cache/wheels): what the wheel test and the node image install without an index
wheels: venv
	$(PY) hack/node.py wheels

# Start the daemon with working defaults: socket /run/pycri/pycri.sock, state in /var/lib/pycri and /run/pycri,
# the default bridge network (written at start when /etc/cni/net.d has none), and our pause image imported as
# registry.k8s.io/pause:3.10 so no registry is needed to run a pod.
run: deps venv proto initc
	hack/pause_archive.sh
	$(VENV)/bin/pycri

# The suite's leak checks look at the whole machine (mounts, netns, veths, cgroups, iptables chains): two runs at
# once would see each other's objects, so runs on one machine take turns on this lock.
TEST_LOCK ?= /tmp/pycri-tests.lock
test: deps venv proto initc images wheels
	flock $(TEST_LOCK) $(VENV)/bin/pytest -q $(PYTEST_ARGS)

# The node suite (tests/node) in a guest with systemd as PID 1 and cgroup v2 only, as most users' nodes are:
# hack/node.py boots a debootstrap'ed Debian 12 under User-mode Linux (the image is built once, ~100 s, and
# rebuilt when its recipe changes). The guest is a process of this machine: no lock with `make test` needed.
node-test: deps venv proto initc images wheels
	$(PY) hack/node.py test $(NODE_TEST_ARGS)

# Install on this machine (or under DESTDIR) as a node package would: the wheel (`pip wheel .`: the CRI stubs and
# pycri-init built in) into a venv of its own, $(PYCRI_HOME), its dependencies from .cache/wheels; then
# $(PREFIX)/bin/pycri, the systemd unit when systemd runs, and /etc/pycri/config.toml, the default CNI network,
# /etc/crictl.yaml, /var/lib/pycri when absent: existing files are never overwritten.
# `make install INSTALL_ARGS=--dry-run` shows what hack/install.py would do.
PREFIX ?= /usr/local
PYCRI_HOME ?= $(PREFIX)/lib/pycri
install: deps venv wheels
	rm -rf .cache/dist build
	$(PY) -m pip wheel -q --no-deps -w .cache/dist .
	$(PYTHON) -m venv --clear "$(DESTDIR)$(PYCRI_HOME)"
	"$(DESTDIR)$(PYCRI_HOME)/bin/pip" install -q --no-index --find-links .cache/wheels .cache/dist/pycri-*.whl
	$(PY) hack/install.py --destdir "$(DESTDIR)" --prefix "$(PREFIX)" --venv "$(DESTDIR)$(PYCRI_HOME)" $(INSTALL_ARGS)

clean:
	rm -rf $(VENV) .cache build *.egg-info runtime/launch/initc/pycri-init
