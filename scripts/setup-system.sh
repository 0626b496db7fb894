#!/usr/bin/env bash
# Installs the system tools Shoal's lab, tests, demo and benchmarks use (Debian 12, as root).
# Idempotent: packages already present are left alone; `apt-get update` runs only when needed.
set -euo pipefail
PKGS=(iproute2 nftables iptables conntrack wireguard-go wireguard-tools iperf3 socat tcpdump
      procps python3-venv python3-dev kmod iputils-ping
      coturn   # coturn: turnserver + turnutils_stunclient, the STUN interop oracle (never started as a service by us)
      miniupnpd miniupnpd-nftables  # the lab's port-mapping gateway (UPnP IGD, NAT-PMP, PCP; shoal.lab.miniupnpd); its postinst leaves the service off (debconf start_daemon=false)
      # real LAN programs of issue #6's acceptance tests (tests/lan/test_lab_programs.py, run only
      # inside lab namespaces; their system services are kept from starting, see below):
      teeworlds-server teeworlds-data  # a game server with headless LAN discovery (0.7.5, stock maps)
      avahi-daemon avahi-utils         # mDNS publish/browse/resolve
      samba smbclient                  # nmbd/smbd, nmblookup, smbclient -L
      iperf                            # iperf 2: UDP multicast streams (iperf3 has no multicast)
      dnsmasq-base busybox)            # DHCP server (binary only, no service) and udhcpc client
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
  # avahi-daemon, smbd/nmbd/samba-ad-dc and teeworlds-server ship system services: a
  # policy-rc.d answering 101 ("action forbidden") keeps invoke-rc.d and deb-systemd-invoke
  # from starting them; ours is removed again, an existing one is left alone.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap '[ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
