"""Installed data: icons, theme, configs and the built-in model (found through importlib.resources)."""
