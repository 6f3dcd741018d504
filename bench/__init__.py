"""Benchmarks: `make bench` runs each, writes JSON under bench/results/ and prints a table.
Every number is compared with a baseline measured in the same run."""
