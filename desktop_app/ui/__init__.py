"""Widgets. Never imports torch or diffusers: images arrive as PIL images or QImages, jobs as requests."""
