"""UDP side: the one data socket (IPv4+IPv6), batched with UDP GSO/GRO."""
