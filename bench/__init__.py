"""Benchmarks behind the README figures; each script prints the machine it ran on."""
