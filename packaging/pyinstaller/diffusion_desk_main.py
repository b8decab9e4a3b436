"""Entry point of the PyInstaller bundle: the same `diffusion-desk` command as the installed package."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from desktop_app.cli.main import main

    sys.exit(main())
