"""The LoRA picker's state: the LoRAs in the LoRA folder (core.loras), a weight for each, and whether each fits
the current model's family. The picker widget shows this and asks it for the `<lora:NAME:WEIGHT>` tag to insert;
the engine resolves the tag by name when the job runs.

The folder is scanned when asked (the picker's first opening, Refresh), never at start-up: reading the headers
of many LoRAs is not free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

from desktop_app.core import paths

# every family's name for display (the LoRA picker, the prompt panel's tooltips, the models dialog)
FAMILY_NAMES = {
    "sd1": "SD 1.x",
    "sd1-inpaint": "SD 1.x inpainting",
    "sd2": "SD 2.x",
    "sd2-v": "SD 2.x (v)",
    "sd2-inpaint": "SD 2.x inpainting",
    "sdxl": "SDXL",
    "sdxl-inpaint": "SDXL inpainting",
    "sd3": "SD 3.x",
    "flux-dev": "FLUX.1 dev",
    "flux-schnell": "FLUX.1 schnell",
    "flux-fill": "FLUX.1 Fill",
    "flux-kontext": "FLUX.1 Kontext",
    "flux": "FLUX.1",
    "unknown": "unknown family",
}
MIN_WEIGHT, MAX_WEIGHT = -4.0, 4.0  # what requests accept for a LoRA's weight


def base_family(family: str | None) -> str:
    """A model family ("sd1", "sd2-v", "sdxl-inpaint", "flux-dev", "") as a LoRA family: "sd1" | "sd2" | "sdxl" |
    "sd3" | "flux" (every FLUX.1 model takes the same LoRAs) | "unknown"."""
    base = (family or "").split("-")[0]
    return base if base in ("sd1", "sd2", "sdxl", "sd3", "flux") else "unknown"


def tag(name: str, weight: float) -> str:
    """A1111's tag, with the weight as A1111 writes it (1 rather than 1.0)."""
    return f"<lora:{name}:{round(float(weight), 2):g}>"


class LoraLibrary(QObject):
    changed = Signal()  # the list (a scan) or the model family it is compared with
    weightChanged = Signal(str, float)

    def __init__(self, folder: Callable[[], Path] = paths.loras_dir, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._folder = folder
        self._loras: list[Any] = []  # core.loras.LoraFile
        self._weights: dict[str, float] = {}
        self._scanned = False
        self._error = ""
        self._model_family = "unknown"

    def folder(self) -> Path:
        return self._folder()

    def scanned(self) -> bool:
        return self._scanned

    def refresh(self) -> None:
        """Scan the folder again (a missing folder has no LoRAs)."""
        from desktop_app.core.loras import scan_loras

        try:
            self._loras = scan_loras(self.folder())
            self._error = ""
        except OSError as exc:  # a folder that cannot be read: the picker says why
            self._loras = []
            self._error = f"The LoRA folder cannot be read: {paths.why(exc)}"
        self._scanned = True
        self.changed.emit()

    def loras(self) -> list[Any]:
        return list(self._loras)

    def error(self) -> str:
        return self._error

    def find(self, name: str) -> Any:
        return next((lora for lora in self._loras if lora.name == name), None)

    # -- weights --------------------------------------------------------------------------------
    def weight(self, name: str) -> float:
        return self._weights.get(name, 1.0)

    def set_weight(self, name: str, weight: float) -> None:
        weight = round(max(MIN_WEIGHT, min(MAX_WEIGHT, float(weight))), 2)
        if self._weights.get(name, 1.0) != weight:
            self._weights[name] = weight
            self.weightChanged.emit(name, weight)

    def tag(self, name: str) -> str:
        return tag(name, self.weight(name))

    # -- the model's family ---------------------------------------------------------------------
    def set_model_family(self, family: str | None) -> None:
        base = base_family(family)
        if base != self._model_family:
            self._model_family = base
            self.changed.emit()

    def model_family(self) -> str:
        return self._model_family

    def mismatch(self, lora: Any) -> str:
        """Why `lora` does not fit the current model ("" when it does, or when either family is unknown)."""
        family = getattr(lora, "family", "unknown")
        if "unknown" in (family, self._model_family) or family == self._model_family:
            return ""
        return (
            f"{lora.name} is a {FAMILY_NAMES.get(family, family)} LoRA and the model is "
            f"{FAMILY_NAMES.get(self._model_family, self._model_family)}: "
            "it will not load with this model"
        )

    # -- settings -----------------------------------------------------------------------------------
    def save(self, s: QSettings) -> None:
        s.setValue("loras/weights", {k: v for k, v in self._weights.items() if v != 1.0})

    def restore(self, s: QSettings) -> None:
        value = s.value("loras/weights")
        if isinstance(value, dict):
            for name, weight in value.items():
                try:
                    self._weights[str(name)] = round(max(MIN_WEIGHT, min(MAX_WEIGHT, float(weight))), 2)
                except (TypeError, ValueError):
                    continue
