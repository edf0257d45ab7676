#!/usr/bin/env bash
# Sets up a fresh machine for trackop: PostgreSQL server binaries (Debian packages),
# a Python virtualenv with trackop, its test extra and the test bed (testbed/), and the
# Go-built test bed binaries (cached under ~/.cache/trackop, so only the first run builds them).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "setup: need root for: $*" >&2; exit 1; fi; }

# PostgreSQL: the test bed runs its own server from the distribution's binaries.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "setup: installing PostgreSQL from Debian's packages" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# The Debian package starts a cluster of its own on 5432; the bed does not use it.

# Lua: a test runs the Argo CD health check of docs/install.md (Argo CD's checks are Lua).
if ! command -v lua5.4 >/dev/null && ! command -v lua >/dev/null; then
  echo "setup: installing Lua from Debian's packages" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.4 >/dev/null
fi

# nss_wrapper: the postgres image's entrypoint stand-in (tests/images/postgres) runs initdb as
# the Pod's uid, which has no passwd entry here; the official entrypoint uses it the same way.
if ! ls /usr/lib/*/libnss_wrapper.so >/dev/null 2>&1 && [ ! -e /usr/lib/libnss_wrapper.so ]; then
  echo "setup: installing nss_wrapper from Debian's packages" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnss-wrapper >/dev/null
fi

# The test bed's real node (testbed/src/trackop_testbed/node): containerd, runc and the CNI
# plugins run it; iptables and conntrack are kube-proxy's (nft removes the empty tables
# iptables leaves); mmdebstrap, gcc and libc6-dev build its images, buildah (daemonless)
# the ones made from Dockerfiles: the operator's own and the MLflow server's (umoci and
# skopeo are there for OCI layouts). None starts a service.
node_pkgs=()
for pair in /usr/bin/containerd:containerd /usr/sbin/runc:runc /usr/sbin/iptables:iptables \
            /usr/sbin/conntrack:conntrack /usr/bin/mmdebstrap:mmdebstrap /usr/bin/umoci:umoci \
            /usr/bin/skopeo:skopeo /usr/bin/gcc:gcc /usr/sbin/nft:nftables /usr/bin/buildah:buildah; do
  [ -x "${pair%%:*}" ] || node_pkgs+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || node_pkgs+=(containernetworking-plugins)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || node_pkgs+=(libc6-dev)
if [ ${#node_pkgs[@]} -gt 0 ]; then
  echo "setup: installing the test bed node's packages from Debian's: ${node_pkgs[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${node_pkgs[@]}" >/dev/null
fi

# Go builds the control plane and MinIO (Go >= 1.25: k8s.io/kubernetes v1.35 needs it).
if ! command -v go >/dev/null; then
  echo "setup: Go >= 1.25 is needed to build the test bed's control plane; install it first" >&2
  exit 1
fi

# Node.js and npm install Azurite, the test bed's Azure Blob emulator (Azurite 3.37 declares
# Node >= 22; it runs on the Node 20 this project is tested with).
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "setup: Node.js >= 20 with npm is needed to install the test bed's Azure emulator (Azurite); install it first" >&2
  exit 1
fi

# Python: a virtualenv in .venv, reinstalled only when a pyproject.toml or constraints.txt
# changes: trackop with its test extra, then the test bed's own package (testbed/: the bed,
# the local kubelet, the quickstart and the `trackop testbed`/`trackop dev` commands), which
# the product's wheel and image never contain. The runtime dependencies are held to
# constraints.txt, the versions the image installs (Dockerfile), so the tests run against
# what ships.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.trackop-installed
want=$(cat pyproject.toml testbed/pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing trackop and its test extra, and the test bed, into .venv" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]" --constraint constraints.txt
  .venv/bin/pip install -q -e ./testbed --constraint constraints.txt
  echo "$want" > "$stamp"
fi

# The Go-built binaries (a no-op once cached).
.venv/bin/python -c 'from trackop_testbed import binaries; binaries.ensure_all()'
# The node's binaries and images, where the node can run (root, iptables); a no-op once cached.
.venv/bin/python - <<'PY'
import sys
from trackop_testbed.node import availability, runner
reason = availability.unavailable_reason()
if reason:
    print(f"setup: the test bed's node cannot run here ({reason}); not building it", file=sys.stderr)
else:
    runner.prepare(lambda message: print(message, file=sys.stderr, flush=True))
PY
