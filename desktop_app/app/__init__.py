"""Process-level code: the Qt application and its wiring, single instance, crash dialog, logs, smoke test."""
