"""Wiring: settings, logging, database, broker, topic provisioning and the CLI."""
