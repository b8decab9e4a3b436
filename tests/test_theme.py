"""The theme: light and dark palettes after the system's scheme, and a Generate button whose text is readable."""

from __future__ import annotations

from collections import Counter

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QPushButton

from desktop_app.ui import theme
from desktop_app.ui.theme import apply_theme, contrast_ratio, current_scheme, relative_luminance, style_accent_button


@pytest.fixture
def restore_palette(qapp):
    palette, style = QPalette(qapp.palette()), qapp.style().name()
    yield qapp
    qapp.setProperty("diffusionDeskThemeChoice", "light")  # stop following the (faked) system scheme
    qapp.setPalette(palette)
    qapp.setStyle(style)


def test_contrast_ratio_matches_wcag():
    assert contrast_ratio(QColor("white"), QColor("black")) == pytest.approx(21.0)
    assert contrast_ratio(QColor("#767676"), QColor("white")) == pytest.approx(4.54, abs=0.01)  # WCAG's classic grey
    assert contrast_ratio(QColor("white"), QColor("white")) == pytest.approx(1.0)


def rendered_contrast(button: QPushButton) -> float:
    """Contrast between the button's text (its lightest pixel) and the lightest part of its face, as painted.

    Fusion paints the face as a vertical gradient, much lighter than the palette's colour: a row's commonest colour
    (when it covers most of the row, inside the frame) is a face colour; the worst of them counts."""
    image = button.grab().toImage()
    faces, everything = [], set()
    for y in range(4, image.height() - 4):
        row = Counter(image.pixel(x, y) for x in range(4, image.width() - 4))
        everything.update(row)
        rgb, n = row.most_common(1)[0]
        if n > (image.width() - 8) * 0.6:
            faces.append(QColor.fromRgb(rgb))
    assert faces, "no face colour found"
    text = max((QColor.fromRgb(rgb) for rgb in everything), key=relative_luminance)
    return min(contrast_ratio(text, face) for face in faces)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_generate_button_text_has_at_least_4_5_to_1_as_drawn(qtbot, restore_palette, scheme):
    assert apply_theme(restore_palette, scheme) == scheme
    button = QPushButton("Generate")
    qtbot.addWidget(button)
    style_accent_button(button)
    button.resize(180, 44)
    button.show()
    qtbot.waitExposed(button)
    palette = button.palette()
    assert contrast_ratio(palette.color(QPalette.ColorRole.Button), palette.color(QPalette.ColorRole.ButtonText)) >= 4.5
    assert rendered_contrast(button) >= 4.5  # what Fusion paints (gradient and all), not only the palette
    assert button.font().bold()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_both_palettes_have_readable_text(restore_palette, scheme):
    apply_theme(restore_palette, scheme)
    palette = restore_palette.palette()
    R = QPalette.ColorRole
    for fg, bg in (
        (R.WindowText, R.Window),
        (R.Text, R.Base),
        (R.ButtonText, R.Button),
        (R.HighlightedText, R.Highlight),
    ):
        assert contrast_ratio(palette.color(fg), palette.color(bg)) >= 4.5, (scheme, fg, bg)
    assert contrast_ratio(palette.color(R.PlaceholderText), palette.color(R.Base)) >= 3.0
    lightness = palette.color(R.Window).lightness()
    assert (lightness < 100) if scheme == "dark" else (lightness > 200)
    assert restore_palette.style().name().lower() == "fusion"


def test_system_scheme_is_followed_when_it_changes(restore_palette, monkeypatch):
    """The offscreen platform cannot change the desktop's scheme: fake what it reports, send Qt's signal."""
    hints = QGuiApplication.styleHints()
    monkeypatch.setattr(theme, "system_is_dark", lambda: False)
    assert apply_theme(restore_palette) == "light"
    monkeypatch.setattr(theme, "system_is_dark", lambda: True)
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)
    assert current_scheme(restore_palette) == "dark"
    assert restore_palette.palette().color(QPalette.ColorRole.Window).lightness() < 100
    # a forced scheme stays put when the system changes
    apply_theme(restore_palette, "light")
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)
    assert current_scheme(restore_palette) == "light"


def test_unknown_system_scheme_reads_gtk_theme(qapp, monkeypatch):
    if QGuiApplication.styleHints().colorScheme() != Qt.ColorScheme.Unknown:
        pytest.skip("this platform reports a scheme")
    monkeypatch.setenv("GTK_THEME", "Adwaita:dark")
    assert theme.system_is_dark()
    monkeypatch.setenv("GTK_THEME", "Adwaita")
    assert not theme.system_is_dark()


def test_bad_scheme_is_refused(qapp):
    with pytest.raises(ValueError, match="scheme"):
        apply_theme(qapp, "purple")
