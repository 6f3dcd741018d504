"""Dossier service: the medical file (case record, forms, documents, messaging, report)."""
