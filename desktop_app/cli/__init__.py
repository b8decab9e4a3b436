"""The `diffusion-desk` command line: `main.py` parses and dispatches, the other modules hold the subcommands."""
