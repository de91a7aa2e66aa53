"""Helpdesk and chat webhooks: ``POST /v1/helpdesk/{provider}``, each provider's signature checked
its own way.

One module per provider (zendesk, intercom, generic for any other tool through Standard Webhooks)
checks authenticity and reads its callbacks into :class:`~collectors.helpdesk.records.SupportCallback`
values; the app produces them to the tickets topic, keyed by ticket. See docs/helpdesk.md.
"""

from collectors.helpdesk._app import PROVIDERS, SupportPublisher, create_app

__all__ = ["PROVIDERS", "SupportPublisher", "create_app"]
