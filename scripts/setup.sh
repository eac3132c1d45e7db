#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine (run as root): Debian packages, the virtualenv with
# kbypass installed editable, the BPF objects, bpffs. Quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: kbypass needs root (BPF, XDP, network namespaces): run 'sudo make ...'" >&2
  exit 1
fi

# 1. Debian packages: the BPF tool chain, netlink/ethtool tools and the real peers tests and benchmarks use.
packages=(
  clang llvm libbpf-dev libbpf1 libxdp-dev libelf-dev bpftool linux-libc-dev
  iproute2 ethtool iputils-ping sockperf tshark tcpdump netsniff-ng nftables iperf3
  dpdk dpdk-dev python3-venv python3-dev make gcc libisal-dev socat nginx-light wrk curl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The virtualenv: made again when the Python it was made with changed (`python3 -VV` differs: an upgraded
#    interpreter can leave it broken or with stale compiled packages), reinstalled when pyproject.toml changed.
#    The stamp keeps both: line 1 pyproject.toml's hash, line 2 the interpreter's version.
py=${PYTHON:-python3}
stamp=.venv/.kbypass-installed
want_pp=$(sha256sum pyproject.toml | cut -d' ' -f1)
want_py=$("$py" -VV 2>&1 | sed -n 1p)
have_pp=$(sed -n 1p "$stamp" 2>/dev/null || true)
have_py=$(sed -n 2p "$stamp" 2>/dev/null || true)
if [ -x .venv/bin/python ] && [ -n "$have_pp" ] && [ -z "$have_py" ]; then
  have_py=$(.venv/bin/python -VV 2>&1 | sed -n 1p || true)  # a stamp from before it kept the version
fi
if [ ! -x .venv/bin/python ] || [ "$have_py" != "$want_py" ]; then
  if [ -e .venv ]; then say "making .venv again for $want_py"; else say "creating .venv"; fi
  "$py" -m venv --clear .venv
  have_pp=
fi
if [ "$have_pp" != "$want_pp" ]; then
  say "installing kbypass (editable) with its test extras into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$(printf '%s\n%s' "$want_pp" "$want_py")" ]; then
  printf '%s\n%s\n' "$want_pp" "$want_py" > "$stamp"
fi

# 3. BPF objects, the C core (build/libkbcore.a), its CPython modules and the C tools (build/xdp_rxdrop);
#    make rebuilds only what changed.
make -s bpf core native tools preload

# 4. bpffs, for tools that expect it. kbypass pins no maps, so a refused mount (a container, a locked-down
#    host) is a warning, not the end of setup; `kbypass doctor` reports it too.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  say "mounting bpffs on /sys/fs/bpf"
  if ! mount -t bpf bpf /sys/fs/bpf; then
    echo "setup: warning: could not mount bpffs on /sys/fs/bpf (kbypass does not need it; pinned maps would)" >&2
  fi
fi
