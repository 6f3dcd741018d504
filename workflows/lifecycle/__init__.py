"""Data lifecycle workflows (issue 10): retention clocks, archive, purge, rights requests."""
