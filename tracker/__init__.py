"""Tracker: capture customer touchpoints, stitch them into journeys, answer questions in ClickHouse."""

__version__ = "0.1.0"
__all__ = ["__version__"]
