"""A real LAN over the mesh: broadcast, multicast and layer-2 networks (issue #6, docs/lan.md).

Pure (sans-IO) building blocks, one concern per module:

    ethernet   Ethernet II / 802.3 raw / 802.2 LLC / SNAP / 802.1Q frames, the MAC type
    arp        answers the interface's ARP requests and IPv6 neighbour solicitations for
               overlay addresses (deterministic per-address MACs)
    broadcast  unicast/broadcast/multicast classification, the fan-out planner, the
               receive-side admission rule and multicast snooping memberships
    storm      token bucket per (sender, network)
    mactable   MAC learning for layer-2 networks
    extension  the message carried inside WireGuard transport plaintext for what is not
               plain unicast IP (broadcast/multicast IP packets, layer-2 frames)
    switch     the engine composing them: interface frames in -> unicast IP for the
               WireGuard engine, extension messages per peer, replies for the interface;
               extension messages in -> frames for the interface
"""
