"""Plain data and storage: no Qt, no torch."""
