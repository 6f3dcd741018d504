from services.matching.app import running
from services.matching.settings import MatchingSettings
from services.shared.grpc_server import run_service

if __name__ == "__main__":
    settings = MatchingSettings()
    run_service("matching", running(settings), settings.log_level)
