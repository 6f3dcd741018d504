from services.identity.app import running
from services.identity.settings import IdentitySettings
from services.shared.grpc_server import run_service

if __name__ == "__main__":
    settings = IdentitySettings()
    run_service("identity", running(settings), settings.log_level)
