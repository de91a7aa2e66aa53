"""Stateless HTTP collectors that turn touchpoints into events on Kafka."""
