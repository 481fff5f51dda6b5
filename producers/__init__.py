"""Turns the outside world into events: the ingest API, CSV import, the traffic simulator."""
