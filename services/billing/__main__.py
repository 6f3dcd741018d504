from services.billing.app import running_all
from services.billing.settings import BillingSettings
from services.shared.grpc_server import run_service

if __name__ == "__main__":
    settings = BillingSettings()
    run_service("billing", running_all(settings), settings.log_level)
