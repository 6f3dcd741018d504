"""Identity service: accounts, authentication, sessions, terms and consent evidence."""
