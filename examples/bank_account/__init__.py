"""The bank-account example: domain, HTTP API and demo."""
