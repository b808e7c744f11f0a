"""Built-in normalize components (work in progress)."""
