"""The platform's gRPC services and the web gateway, one package each."""
