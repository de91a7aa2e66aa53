"""Versioned data definitions shipped with Tracker: the touchpoint JSON Schema, ClickHouse
migrations and Kafka topic definitions. Read them through ``importlib.resources``."""
