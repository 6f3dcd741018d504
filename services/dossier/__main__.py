from services.dossier.app import running
from services.dossier.settings import DossierSettings
from services.shared.grpc_server import run_service

if __name__ == "__main__":
    settings = DossierSettings()
    run_service("dossier", running(settings), settings.log_level)
