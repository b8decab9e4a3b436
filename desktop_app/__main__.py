"""`python -m desktop_app` behaves like the `diffusion-desk` command."""

import sys

from desktop_app.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
