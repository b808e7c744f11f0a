"""Built-in splits components (work in progress)."""
