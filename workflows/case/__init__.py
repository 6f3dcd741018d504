"""The case workflow: one per opinion request, from submission to delivered opinion."""
