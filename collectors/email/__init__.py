"""Email webhooks: ``POST /v1/email/{provider}``, each provider's signature checked its own way.

One module per provider (sendgrid, mailgun, postmark, ses) checks authenticity and reads its
events; :mod:`collectors.email.records` turns them into touchpoints on the ``email`` channel,
produced to the raw topic like any client's. See docs/email.md.
"""

from collectors.email._app import PROVIDERS, create_app

__all__ = ["PROVIDERS", "create_app"]
