#!/usr/bin/env bash
# Installs the system tools Shoal's lab, tests, demo and benchmarks use (Debian 12, as root).
# Idempotent: packages already present are left alone; `apt-get update` runs only when needed.
set -euo pipefail
PKGS=(iproute2 nftables iptables conntrack wireguard-go wireguard-tools iperf3 socat tcpdump
      procps python3-venv python3-dev kmod iputils-ping
      coturn   # coturn: turnserver + turnutils_stunclient, the STUN interop oracle (never started as a service by us)
      miniupnpd miniupnpd-nftables)  # the lab's port-mapping gateway (UPnP IGD, NAT-PMP, PCP; shoal.lab.miniupnpd); its postinst leaves the service off (debconf start_daemon=false)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
