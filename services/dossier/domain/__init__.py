"""Dossier rules as plain functions; the servicer only translates messages."""
