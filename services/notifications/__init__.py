"""Notifications service: SMS and email from templates, delivered once, no health data."""
