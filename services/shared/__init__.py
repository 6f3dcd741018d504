"""What every service needs and nothing else: settings base, gRPC bootstrap, internal
identity tokens, telemetry, logging, database session, object storage.

No business logic lives here: a rule about cases, accounts or money belongs to its service.
"""
