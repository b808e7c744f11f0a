"""Built-in evaluate components (work in progress)."""
