"""Example third-party hemaflow plugin."""
