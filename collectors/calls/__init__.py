"""Call webhooks: ``POST /v1/calls/{provider}``, each provider's signature checked its own way.

One module per provider (twilio, vonage, telnyx, plivo, freeswitch, asterisk, generic) checks
authenticity and normalizes callbacks; the app produces them to the calls topic. See docs/calls.md.
"""

from collectors.calls._app import PROVIDERS, CallPublisher, create_app

__all__ = ["PROVIDERS", "CallPublisher", "create_app"]
