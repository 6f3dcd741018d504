"""Billing service: prices, partner coverage, card payment, invoices under billing mandates."""
