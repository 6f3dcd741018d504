import uvicorn

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.shared.logging import configure_logging
from services.shared.telemetry import configure_tracing

if __name__ == "__main__":
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    configure_tracing("gateway")
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False
    )
