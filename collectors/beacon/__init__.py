"""The web beacon: ``POST /v1/events``, the ``GET /v1/p.gif`` pixel, ``POST /v1/numbers`` for
number pools, ``GET /t.js``, health and metrics."""

from collectors.beacon._app import create_app
from collectors.beacon._numbers import NumberReservations

__all__ = ["NumberReservations", "create_app"]
