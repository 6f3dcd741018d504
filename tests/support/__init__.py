"""Test and benchmark harness: real servers on port 0, fresh databases, in-memory traces."""
