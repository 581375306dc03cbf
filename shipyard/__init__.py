"""Shipyard: every model commit becomes a reproducible, gated release."""

__version__ = "0.1.0"
