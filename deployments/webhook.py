"""The webhook receiver: lives in `shipyard/deployments/webhook.py` (`shipyard webhook serve`);
this file only names it."""

from shipyard.deployments.webhook import WebhookApp, WebhookSettings, serve

__all__ = ["WebhookApp", "WebhookSettings", "serve"]
