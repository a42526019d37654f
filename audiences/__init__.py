"""audiences: privacy-gated healthcare audiences from first-party CRM data."""

__version__ = "0.1.0"
