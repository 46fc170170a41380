"""HTTP service: `create_app(model, index, settings)` builds the FastAPI app that `m3embed serve` runs."""

from m3embed._optional import require

require("fastapi", "serve")  # a one-line hint when the [serve] extra is missing, before the modules below import it
require("prometheus_client", "serve")
require("uvicorn", "serve")

from m3embed.server.app import Server, ServerSettings, create_app  # noqa: E402

__all__ = ["Server", "ServerSettings", "create_app"]
