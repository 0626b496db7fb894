"""Standalone userspace WireGuard: `shoal wg up|down|show` over wg-quick style config files."""
