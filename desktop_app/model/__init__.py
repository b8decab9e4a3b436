"""The window's state as QObjects with change signals: no widgets, no torch; widgets in ui/ bind to them."""
