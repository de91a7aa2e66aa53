"""Short links: ``GET|HEAD /{slug}`` redirects and records a click; ``/api/links`` manages links."""

from collectors.links._app import create_app
from collectors.links._model import CLICK_ID_PARAM, QR_PARAM, Link, parse_link
from collectors.links._state import LinkState, LinkTable

__all__ = [
    "CLICK_ID_PARAM",
    "QR_PARAM",
    "Link",
    "LinkState",
    "LinkTable",
    "create_app",
    "parse_link",
]
