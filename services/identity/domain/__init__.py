"""Identity rules as plain functions and classes; the servicer only translates messages."""
