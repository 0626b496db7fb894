"""nftables rulesets of the lab: NAT routers, carrier NATs and the internet's fault table.

Pure text generation (tested without root); `shoal.lab.lab` loads the text with `nft -f -`
inside the right namespace. Each ruleset is one table, replaced atomically
(`add table` + `delete table` + the new table in one transaction).

Router namespace, interfaces `wan0` (towards the internet or the carrier NAT) and `lan0` (a
bridge holding the LAN ports), table `ip shoal`, RFC 4787 terms:

    public           no router at all
    port-restricted  postrouting `masquerade`: Linux keeps the source port when it is free, so
                     the mapping is endpoint-independent (EIM); conntrack admits only replies
                     from the exact remote address:port (address-and-port-dependent filtering)
    symmetric        `masquerade random,fully-random`: every new (remote addr, port) gets a
                     fresh random port (address-and-port-dependent mapping); filtering as above
    full-cone        masquerade (EIM) plus endpoint-independent filtering: an outbound UDP flow
                     records "external port -> internal addr . port" in the dynamic map @hp
                     (filter chain after SNAT, `ct original` gives the inside endpoint); a new
                     inbound packet to WAN:port from anyone is DNATed through @hp
    double-nat       the home router is port-restricted and its WAN faces a carrier NAT
                     namespace (also masquerade): two EIM/APDF NATs in a row
    udp-blocked      port-restricted, but the forward chain lets out only TCP to 80 and 443
    hairpin          (shared routers) LAN packets to WAN:port are DNATed through @hp to the
                     LAN peer owning that mapping and SNATed to WAN, so the peer sees the
                     sender's external mapping (RFC 4787 REQ-9); without it such packets hit
                     the router itself and are dropped

New inbound connections from the WAN are dropped (forward policy drop) unless DNATed, and
new UDP flows to the router itself from the WAN are dropped silently in its input chain, as a
home router's WAN firewall does. (Without that, an unsolicited datagram to WAN:port is
answered with ICMP port-unreachable and leaves a confirmed conntrack entry behind; a later
outbound flow from the LAN host owning that port then collides with it and is masqueraded to
another port, which no real consumer NAT does and which defeats hole punching.)

Internet namespace: table `bridge shoal_faults` drops a share of the frames crossing a port
(`numgen random mod 10000 < N` -> N/100 percent), in both directions.
"""

from __future__ import annotations

from .topology import RouterPlan

WAN, LAN = "wan0", "lan0"
HAIRPIN_TIMEOUT_S = 180  # RFC 4787 REQ-5: UDP mapping timer >= 2 min


def _replace(family: str, table: str, body: str) -> str:
    return f"add table {family} {table}\ndelete table {family} {table}\ntable {family} {table} {{\n{body}}}\n"


_WAN_INPUT = ("  chain input {\n    type filter hook input priority 0; policy accept;\n"
              f'    iifname "{WAN}" meta l4proto udp ct state new drop\n'
              "  }\n")


def router_ruleset(r: RouterPlan) -> str:
    """The `ip shoal` table of a home NAT router (any NAT type but public)."""
    uses_map = r.nat == "full-cone" or r.hairpin
    lines: list[str] = []
    if uses_map:
        lines.append(
            "  map hp {\n    type inet_service : ipv4_addr . inet_service\n"
            f"    flags dynamic, timeout\n    timeout {HAIRPIN_TIMEOUT_S}s\n  }}\n")
    out_rule = (f'    iifname "{LAN}" oifname "{WAN}" meta l4proto tcp tcp dport {{ 80, 443 }} accept\n'
                if r.nat == "udp-blocked" else f'    iifname "{LAN}" oifname "{WAN}" accept\n')
    lines.append(
        "  chain forward {\n    type filter hook forward priority 0; policy drop;\n"
        "    ct state established,related accept\n"
        f"{out_rule}"
        f'    ct status dnat iifname "{WAN}" oifname "{LAN}" accept\n'
        f'    ct status dnat iifname "{LAN}" oifname "{LAN}" accept\n'
        "  }\n")
    lines.append(_WAN_INPUT)
    masq = "masquerade random,fully-random" if r.nat == "symmetric" else "masquerade"
    post = f'    oifname "{WAN}" {masq}\n'
    if r.hairpin:
        post += f'    ct status dnat iifname "{LAN}" oifname "{LAN}" snat to {r.wan_addr}\n'
    lines.append(f"  chain postrouting {{\n    type nat hook postrouting priority 100;\n{post}  }}\n")
    pre = ""
    if r.nat == "full-cone":
        pre += f'    iifname "{WAN}" ip daddr {r.wan_addr} dnat ip addr . port to udp dport map @hp\n'
    if r.hairpin:
        pre += f'    iifname "{LAN}" ip daddr {r.wan_addr} dnat ip addr . port to udp dport map @hp\n'
    if pre:
        lines.append(f"  chain prerouting {{\n    type nat hook prerouting priority -100;\n{pre}  }}\n")
    if uses_map:
        lines.append(
            "  chain track {\n    type filter hook postrouting priority 200;\n"
            f'    oifname "{WAN}" meta l4proto udp ct direction original ct status snat '
            "update @hp { udp sport : ct original ip saddr . ct original proto-src }\n"
            "  }\n")
    return _replace("ip", "shoal", "".join(lines))


def carrier_ruleset() -> str:
    """The `ip shoal` table of a carrier NAT (inside `cin0`, outside `wan0`)."""
    body = (
        "  chain forward {\n    type filter hook forward priority 0; policy drop;\n"
        "    ct state established,related accept\n"
        f'    iifname "cin0" oifname "{WAN}" accept\n'
        "  }\n"
        f"{_WAN_INPUT}"
        f'  chain postrouting {{\n    type nat hook postrouting priority 100;\n    oifname "{WAN}" masquerade\n  }}\n')
    return _replace("ip", "shoal", body)


def faults_ruleset(loss: dict[tuple[str, ...], float]) -> str:
    """`bridge shoal_faults`: for each set of bridge port names, drop `percent` of frames."""
    rules = ""
    for ports, percent in sorted(loss.items()):
        n = round(percent * 100)
        if n <= 0:
            continue
        names = ", ".join(f'"{p}"' for p in ports)
        rules += f"    iifname {{ {names} }} numgen random mod 10000 < {n} drop\n"
        rules += f"    oifname {{ {names} }} numgen random mod 10000 < {n} drop\n"
    body = f"  chain links {{\n    type filter hook forward priority 0;\n{rules}  }}\n"
    return _replace("bridge", "shoal_faults", body)
