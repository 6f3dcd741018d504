"""Temporal workflows, activities and the worker that drive each case end to end."""
