from services.notifications.app import running
from services.notifications.settings import NotificationsSettings
from services.shared.grpc_server import run_service

if __name__ == "__main__":
    settings = NotificationsSettings()
    run_service("notifications", running(settings), settings.log_level)
