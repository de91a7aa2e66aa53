"""Faust agents and the plain-Python domain logic they wire: ingest, enrichment, sinks."""
