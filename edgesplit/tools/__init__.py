"""Tooling on top of the command line: the link emulator, emulated deployments, load generation, benchmarks and
their reports. Installed with the `bench` extra (`pip install .[bench]`), never needed by a running tier."""
