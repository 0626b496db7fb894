"""Shoal: a self-hostable mesh VPN with a WireGuard-protocol data plane."""

__version__ = "0.1.0"
