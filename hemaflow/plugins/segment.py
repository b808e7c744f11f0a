"""Built-in segment components (work in progress)."""
