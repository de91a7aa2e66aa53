"""The web beacon: ``POST /v1/events``, the ``GET /v1/p.gif`` pixel, health and metrics."""

from collectors.beacon._app import create_app

__all__ = ["create_app"]
