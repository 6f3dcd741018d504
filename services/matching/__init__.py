"""Matching service: the referent-doctor registry and assignments."""
