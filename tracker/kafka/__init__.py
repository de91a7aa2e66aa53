"""Kafka adapters: the publisher collectors produce through, compacted-topic state, the topics."""
