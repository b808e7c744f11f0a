"""Built-in features components (work in progress)."""
