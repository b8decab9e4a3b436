PREFIX = "comfyui:"  # a model id for a checkpoint on ComfyUI servers: comfyui:<ckpt_name>


def is_remote(model: str | None) -> bool:
    """Whether a model id names a checkpoint on ComfyUI servers (cheap: the window asks before torch is there)."""
    return bool(model) and str(model).startswith(PREFIX)
