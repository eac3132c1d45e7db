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
  clang llvm libbpf-dev libbpf1 libelf-dev bpftool linux-libc-dev
  iproute2 ethtool iputils-ping sockperf tshark tcpdump netsniff-ng nftables iperf3
  dpdk dpdk-dev python3-venv python3-dev make gcc libisal-dev
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

# 2. The virtualenv, reinstalled only when pyproject.toml changed.
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$py" -m venv .venv
fi
stamp=.venv/.kbypass-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing kbypass (editable) with its test extras into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  echo "$want" > "$stamp"
fi

# 3. BPF objects and the endpoint's C fast path (make rebuilds only what changed).
make -s bpf native

# 4. bpffs, for pinned maps and for tools that expect it.
if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
  say "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi
