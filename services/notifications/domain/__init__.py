"""Notification rules: templates and their variables, recipients, the outbox, delivery."""
