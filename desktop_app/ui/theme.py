"""The look: Fusion with a light or a dark palette that follows the system's colour scheme, and the accent button.

Palettes only, no application style sheet: a style sheet makes every widget slower to create and paint.

    apply_theme(app)                 # "system" (default): light or dark as the desktop says, and follows changes
    apply_theme(app, "dark")         # or force one
    style_accent_button(button)      # the primary button (Generate): text contrast >= 4.5:1 in both schemes
"""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QAbstractButton, QApplication

SCHEMES = ("system", "light", "dark")

# The accent button's colour in the palette. Fusion paints a button face much lighter than its palette colour (about
# 1.4x in value, less saturated, as a gradient): this navy is drawn as #3164c2..#2a55a6, white text on it 5.6:1 (WCAG 2)
# at its lightest. The old (75, 111, 224) was drawn as #82a9fd: 2.3:1.
ACCENT = QColor(0, 45, 130)
ACCENT_TEXT = QColor(255, 255, 255)
ACCENT_DISABLED = QColor(112, 130, 170)
ACCENT_DISABLED_TEXT = QColor(232, 236, 244)

_THEME_PROPERTY = "diffusionDeskTheme"  # the old ui/main_window.apply_dark_theme sees it and leaves the palette alone
_SCHEME_PROPERTY = "diffusionDeskScheme"

Role = QPalette.ColorRole
Group = QPalette.ColorGroup


def _palette(colors: dict[QPalette.ColorRole, QColor], disabled: QColor) -> QPalette:
    palette = QPalette()
    for role, color in colors.items():
        palette.setColor(role, color)
    for role in (Role.Text, Role.ButtonText, Role.WindowText):
        palette.setColor(Group.Disabled, role, disabled)
    return palette


def dark_palette() -> QPalette:
    text = QColor(222, 224, 228)
    return _palette(
        {
            Role.Window: QColor(43, 45, 49),
            Role.WindowText: text,
            Role.Base: QColor(30, 31, 34),
            Role.AlternateBase: QColor(43, 45, 49),
            Role.ToolTipBase: QColor(20, 20, 22),
            Role.ToolTipText: text,
            Role.Text: text,
            Role.Button: QColor(54, 57, 63),
            Role.ButtonText: text,
            Role.BrightText: QColor(255, 90, 90),
            Role.Highlight: QColor(52, 98, 210),
            Role.HighlightedText: QColor(255, 255, 255),
            Role.Link: QColor(130, 165, 255),
            Role.PlaceholderText: QColor(140, 144, 152),
        },
        disabled=QColor(120, 123, 130),
    )


def light_palette() -> QPalette:
    text = QColor(28, 30, 33)
    return _palette(
        {
            Role.Window: QColor(239, 240, 242),
            Role.WindowText: text,
            Role.Base: QColor(255, 255, 255),
            Role.AlternateBase: QColor(245, 246, 248),
            Role.ToolTipBase: QColor(255, 255, 240),
            Role.ToolTipText: text,
            Role.Text: text,
            Role.Button: QColor(228, 230, 234),
            Role.ButtonText: text,
            Role.BrightText: QColor(200, 0, 0),
            Role.Highlight: QColor(38, 89, 204),
            Role.HighlightedText: QColor(255, 255, 255),
            Role.Link: QColor(30, 80, 190),
            Role.PlaceholderText: QColor(110, 114, 122),
        },
        disabled=QColor(150, 153, 160),
    )


def system_is_dark() -> bool:
    """What the desktop asks for; where it does not say (many X11 sessions), what its palette looks like."""
    scheme = QGuiApplication.styleHints().colorScheme()
    if scheme == Qt.ColorScheme.Dark:
        return True
    if scheme == Qt.ColorScheme.Light:
        return False
    # Unknown: GTK_THEME=Adwaita:dark is how many such sessions say it; else light, as Fusion and most desktops
    return os.environ.get("GTK_THEME", "").lower().endswith(":dark")


def current_scheme(app: QApplication) -> str:
    """'light' or 'dark': what apply_theme last put on `app` ('' before)."""
    value = app.property(_SCHEME_PROPERTY)
    return str(value) if value else ""


def apply_theme(app: QApplication, scheme: str = "system") -> str:
    """Fusion with the light or the dark palette; "system" follows the desktop, now and when it changes.

    Returns the scheme applied ('light' or 'dark'). Calling it again switches (and keeps one connection)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
    if app.style().name().lower() != "fusion":
        app.setStyle("Fusion")
    app.setProperty("diffusionDeskThemeChoice", scheme)
    dark = system_is_dark() if scheme == "system" else scheme == "dark"
    applied = "dark" if dark else "light"
    app.setPalette(dark_palette() if dark else light_palette())
    app.setProperty(_THEME_PROPERTY, True)
    app.setProperty(_SCHEME_PROPERTY, applied)
    if not app.property("diffusionDeskThemeConnected"):
        app.setProperty("diffusionDeskThemeConnected", True)
        QGuiApplication.styleHints().colorSchemeChanged.connect(lambda _scheme: _follow_system(app))
    return applied


def _follow_system(app: QApplication) -> None:
    if app.property("diffusionDeskThemeChoice") == "system":
        apply_theme(app, "system")


def style_accent_button(button: QAbstractButton) -> None:
    """The primary button (Generate): bold white on the accent blue, by palette, the same in both schemes."""
    palette = button.palette()
    for group in (Group.Active, Group.Inactive):
        palette.setColor(group, Role.Button, ACCENT)
        palette.setColor(group, Role.ButtonText, ACCENT_TEXT)
    palette.setColor(Group.Disabled, Role.Button, ACCENT_DISABLED)
    palette.setColor(Group.Disabled, Role.ButtonText, ACCENT_DISABLED_TEXT)
    button.setPalette(palette)
    font = button.font()
    font.setBold(True)
    button.setFont(font)


def relative_luminance(color: QColor) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(color.red()) + 0.7152 * channel(color.green()) + 0.0722 * channel(color.blue())


def contrast_ratio(a: QColor, b: QColor) -> float:
    """WCAG 2 contrast ratio, 1..21 (4.5 is the minimum for body text)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


__all__ = [
    "ACCENT",
    "SCHEMES",
    "apply_theme",
    "contrast_ratio",
    "current_scheme",
    "dark_palette",
    "light_palette",
    "relative_luminance",
    "style_accent_button",
    "system_is_dark",
]
