"""HTTP service: `create_app(model, index, settings)` builds the FastAPI app that `m3embed serve` runs."""

from m3embed.server.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
