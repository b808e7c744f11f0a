"""Example third-party hemaflow plugin: a top-k attention MIL aggregator."""
