"""`--backend comfyui=URL` (repeatable) for the job commands: the jobs run on those ComfyUI servers, as a pool."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from desktop_app.core.errors import UserError

TOKEN_ENV = "DIFFUSION_DESK_COMFYUI_TOKEN"  # a token on the command line would show in `ps`; the environment does not


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="comfyui=URL",
        help="run the job on a ComfyUI server (repeat for a pool: each job goes to the least busy one); the model is "
        "a checkpoint name the server lists (default: its first)",
    )
    parser.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help=f"send the bearer token (from {TOKEN_ENV}) over plain http to a host other than this machine",
    )


def parse_backend(text: str) -> str:
    kind, sep, url = text.partition("=")
    if not sep or kind.strip().lower() != "comfyui" or not url.strip():
        raise UserError(f"--backend {text!r} is not comfyui=URL.", "Use e.g. --backend comfyui=http://127.0.0.1:8188")
    return url.strip()


def backend_from_args(args: argparse.Namespace, local_factory: Callable[[], Any]) -> Any:
    """The Backend for these arguments: `local_factory()` itself without --backend, else a RoutingBackend that
    sends every job to the ComfyUI servers given."""
    urls = [parse_backend(text) for text in getattr(args, "backend", None) or []]
    if not urls:
        return local_factory()
    from desktop_app.comfyui.backend import ComfyBackend
    from desktop_app.comfyui.client import ComfyClient
    from desktop_app.routing import RoutingBackend

    token = os.environ.get(TOKEN_ENV) or None
    clients = [ComfyClient(url, token, getattr(args, "allow_insecure_token", False)) for url in urls]
    return RoutingBackend(local_factory, ComfyBackend(clients), remote_all=True)


__all__ = ["TOKEN_ENV", "add_backend_arguments", "backend_from_args", "parse_backend"]
