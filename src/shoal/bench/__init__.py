"""Benchmarks: `make bench` runs Shoal and wireguard-go side by side in the lab."""
