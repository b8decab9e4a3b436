"""The Servers dialog: add or remove a ComfyUI server (address and optional token), see whether it answers, its GPU,
free memory and models. Binds to `model.connections.Connections`; holds no state of its own."""

from __future__ import annotations

from typing import Any, TypeVar

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.errors import UserError

W = TypeVar("W", bound=QWidget)


def _named(widget: W, name: str) -> W:
    widget.setObjectName(name)
    return widget


def _size(num_bytes: Any) -> str:
    try:
        value = float(num_bytes)
    except (TypeError, ValueError):
        return ""
    return f"{value / 2**30:.1f} GB free"


class ConnectionsDialog(QDialog):
    def __init__(self, connections: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("connectionsDialog")
        self.setWindowTitle("ComfyUI servers")
        self.connections = connections
        self.list = _named(QTreeWidget(), "serverList")
        self.list.setHeaderLabels(["Server", "Status", "GPU", "Memory", "Models"])
        self.list.setRootIsDecorated(False)
        self.details = _named(QPlainTextEdit(), "serverDetails")
        self.details.setReadOnly(True)
        self.details.setMaximumHeight(120)
        self.url = _named(QLineEdit(), "serverUrl")
        self.url.setPlaceholderText("http://127.0.0.1:8188")
        self.token = _named(QLineEdit(), "serverToken")
        self.token.setPlaceholderText("optional bearer token")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.insecure = _named(QCheckBox("Send the token over plain http"), "serverInsecure")
        self.insecure.setToolTip("Only for a server on a network you trust: anyone on the way can read it.")
        self.error = _named(QLabel(), "serverError")
        self.error.setWordWrap(True)
        add = _named(QPushButton("&Add"), "serverAdd")
        self.remove_button = _named(QPushButton("&Remove"), "serverRemove")
        refresh = _named(QPushButton("Re&fresh"), "serverRefresh")
        form = QFormLayout()
        form.addRow("Address", self.url)
        form.addRow("Token", self.token)
        form.addRow("", self.insecure)
        buttons = QHBoxLayout()
        for b in (add, self.remove_button, refresh):
            buttons.addWidget(b)
        buttons.addStretch(1)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addWidget(self.details)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addLayout(buttons)
        layout.addWidget(close)
        add.clicked.connect(self.add_server)
        self.remove_button.clicked.connect(self.remove_selected)
        refresh.clicked.connect(lambda: self.connections.refresh())
        close.rejected.connect(self.reject)
        self.list.currentItemChanged.connect(lambda *_: self._show_details())
        connections.changed.connect(self._fill)
        connections.statusChanged.connect(self._on_status)
        self._fill()
        self.resize(640, 420)

    # -- actions -----------------------------------------------------------------
    def add_server(self, ask: Any = None) -> bool:
        """Add what the fields say; asks before a token would go over plain http to another machine."""
        url, token = self.url.text().strip(), self.token.text()
        allow = self.insecure.isChecked()
        try:
            if token and not allow and self.connections.needs_consent(url, token):
                ask = ask or self._ask_insecure
                if not ask(url):
                    self.error.setText("Not added: use https:// for this server, or allow plain http.")
                    return False
                allow = True
            added = self.connections.add(url, token, allow)
        except UserError as exc:
            self.error.setText(f"{exc.message} {exc.hint}".strip())
            return False
        self.error.setText("")
        self.url.clear()
        self.token.clear()
        self.insecure.setChecked(False)
        self.connections.refresh()
        self._select(added)
        return True

    def _ask_insecure(self, url: str) -> bool:
        answer = QMessageBox.question(
            self,
            "Send the token unencrypted?",
            f"{url} is plain http on another machine: the token would travel unencrypted. Send it anyway?",
        )
        return answer == QMessageBox.StandardButton.Yes

    def remove_selected(self) -> bool:
        item = self.list.currentItem()
        return bool(item and self.connections.remove(item.data(0, Qt.ItemDataRole.UserRole)))

    # -- view --------------------------------------------------------------------
    def _fill(self) -> None:
        current = self.list.currentItem()
        keep = current.data(0, Qt.ItemDataRole.UserRole) if current else None
        self.list.clear()
        for server in self.connections.servers():
            item = QTreeWidgetItem([server.url])
            item.setData(0, Qt.ItemDataRole.UserRole, server.url)
            self.list.addTopLevelItem(item)
            self._paint(item, self.connections.status(server.url))
        self._select(keep)
        self.remove_button.setEnabled(self.list.topLevelItemCount() > 0)

    def _select(self, url: str | None) -> None:
        for i in range(self.list.topLevelItemCount()):
            item = self.list.topLevelItem(i)
            if item is not None and item.data(0, Qt.ItemDataRole.UserRole) == url:
                self.list.setCurrentItem(item)
                return
        first = self.list.topLevelItem(0)
        if first is not None:
            self.list.setCurrentItem(first)

    def _paint(self, item: QTreeWidgetItem, status: dict) -> None:
        if not status:
            item.setText(1, "asking…")
            return
        if status.get("ok"):
            item.setText(1, f"answers (ComfyUI {status.get('version', '')})".replace(" ()", ""))
            item.setText(2, str(status.get("gpu", "")))
            item.setText(3, _size(status.get("free_memory")))
            item.setText(4, f"{len(status.get('checkpoints', []))} checkpoints, {len(status.get('loras', []))} LoRAs")
        else:
            item.setText(1, "does not answer")
            item.setToolTip(1, str(status.get("error", "")))
            for column in (2, 3, 4):
                item.setText(column, "")

    def _on_status(self, url: str, status: dict) -> None:
        for i in range(self.list.topLevelItemCount()):
            item = self.list.topLevelItem(i)
            if item is not None and item.data(0, Qt.ItemDataRole.UserRole) == url:
                self._paint(item, status)
        self._show_details()

    def _show_details(self) -> None:
        item = self.list.currentItem()
        if item is None:
            self.details.setPlainText("Add a ComfyUI server by its address; its models then show in the model list.")
            return
        status = self.connections.status(item.data(0, Qt.ItemDataRole.UserRole))
        if not status:
            self.details.setPlainText("Asking the server…")
        elif not status.get("ok"):
            self.details.setPlainText(str(status.get("error", "It does not answer.")))
        else:
            lines = ["Checkpoints: " + (", ".join(status.get("checkpoints", [])) or "none")]
            lines.append("LoRAs: " + (", ".join(status.get("loras", [])) or "none"))
            self.details.setPlainText("\n".join(lines))


__all__ = ["ConnectionsDialog"]
