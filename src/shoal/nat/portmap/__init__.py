"""Port mapping on the local NAT gateway: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD.

Codecs and the PCP/NAT-PMP engine are sans-IO (`natpmp`, `pcp`, `upnp`, `engine`); `client`
is the asyncio glue the node daemon uses (`PortMapper`, `probe`, `default_gateway`).
"""
