"""Performance measurement: optimizer variants in-process, servers over loopback HTTP, and
our server against three baselines (``python -m benchmarks --help``)."""
