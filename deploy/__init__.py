"""Running the platform: the one-command dev stack and demo data."""
