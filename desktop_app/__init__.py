"""Diffusion Desk: a desktop app for local diffusion models."""

__version__ = "0.1.0"
