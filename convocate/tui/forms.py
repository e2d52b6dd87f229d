"""The TUI's npyscreen forms: the session table, and the dialogs every action opens.

Forms only call methods of :class:`~convocate.tui.app.ConvocateApp` (their ``parentApp``); every
dialog keeps the main form's header ticking while it waits for a key (:class:`Ticking`). The
functions at the end (:func:`confirm`, :func:`choose`, :func:`ask`, :func:`notify`) open a dialog
and return the operator's answer.
"""

from __future__ import annotations

import contextlib
import curses
import os
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import npyscreen

from convocate.common.model import SessionView
from convocate.orphans import MIGRATE_HINT
from convocate.tui.fields import FIELDS, LABELS, SessionFields
from convocate.tui.model import Row, header

if TYPE_CHECKING:
    from convocate.tui.app import ConvocateApp

#: The key line under the table.
KEYS = "Enter attach  1-9 jump  w next waiting  W reply  P replay  N new  C clone  E edit  B bg  D delete  " \
       "K kill  O override  S settings  R restart  Q quit"


class SessionTable(npyscreen.MultiLineAction):
    """The session rows; each value is a :class:`Row`."""

    def display_value(self, row: Row) -> str:
        if row is None:
            return ""
        number = 0
        if row.session is not None:
            number = self.parent.parentApp.number_of(row)
        return row.render(number)

    def actionHighlighted(self, row: Row, key: int) -> None:
        self.parent.parentApp.attach(row)


class MainForm(npyscreen.FormBaseNew):
    """The session table with a title line, column headers and a status line."""

    def create(self) -> None:
        app: ConvocateApp = self.parentApp
        self.title = self.add(npyscreen.FixedText, value="convocate", editable=False, rely=1, relx=2)
        self.columns_line = self.add(npyscreen.FixedText, value=header(), editable=False, rely=2, relx=2,
                                     color="LABEL")
        self.table = self.add(SessionTable, rely=3, relx=2, max_height=-3, scroll_exit=False, values=[],
                              allow_filtering=False)
        self.message = self.add(npyscreen.FixedText, value="", editable=False, rely=-4, relx=2, color="CAUTION")
        self.keys = self.add(npyscreen.FixedText, value=KEYS, editable=False, rely=-3, relx=2, color="LABEL")
        handlers: dict[Any, Callable[[Any], Any]] = {}
        for key, action in {"n": app.new, "c": app.clone, "e": app.edit, "b": app.background, "d": app.delete,
                            "k": app.kill, "o": app.override, "s": app.settings, "r": app.restart,
                            "w": app.next_waiting, "p": app.replay, "q": app.quit}.items():
            # By code, not by character: MultiLine binds ord("k"), ord("n") ... itself, and codes are looked up first.
            handlers[ord(key)] = handlers[ord(key.upper())] = _key(action, self)
        handlers[ord("W")] = _key(app.waiting_list, self)  # w jumps to the next waiting row, W lists them all
        for digit in "123456789":
            handlers[ord(digit)] = _jump(int(digit), self)
        self.table.add_handlers(handlers)
        self._shown: tuple[int, str, str] = (-1, "", "")

    def selected(self) -> Row | None:
        rows = self.table.values
        i = self.table.cursor_line
        return rows[i] if rows and 0 <= i < len(rows) else None

    def while_waiting(self) -> None:
        self.parentApp.drain()
        if self.paint():
            self.refresh()

    def paint(self) -> bool:
        """Bring the title (counts, load, clock), the status line and the table up to date in the pad.

        Returns:
            Whether anything changed (the caller puts the pad on the screen).
        """
        app: ConvocateApp = self.parentApp
        clock = time.strftime("%H:%M:%S")
        selected = self.selected()
        message = app.message or (selected.detail if selected is not None else "")
        if (app.model.version, clock, message) == self._shown:
            return False
        if app.model.version != self._shown[0]:
            app.refresh_rows(self)
            self.table.update()
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        capacity = app.model.capacity_summary()
        counts = app.model.activity_counts()
        self.title.value = (f"convocate  {len(app.model.agents)} agent(s), {app.model.session_count()} session(s)"
                            f"{f' ({counts})' if counts else ''}"
                            f"  {capacity + '  ' if capacity else ''}load {load}  {clock}")
        self.message.value = message  # the app's news first, else the selected session's credential trouble
        self._shown = (app.model.version, clock, message)
        # Only the widgets that change: Form.display() erases the pad, and the table
        # skips redrawing lines it thinks are still on screen.
        self.title.update()
        self.message.update()
        return True


def _key(action: Callable[[], None], form: MainForm) -> Callable[[Any], None]:
    return lambda _key: action()


def _jump(number: int, form: MainForm) -> Callable[[Any], None]:
    def go(_key: Any) -> None:
        for i, row in enumerate(form.table.values):
            if row.session is not None and form.parentApp.number_of(row) == number:
                form.table.cursor_line = i
                form.table.display()
                return
    return go


class Ticking:
    """Mixed into every dialog: while it waits for a key, the main form's header keeps ticking.

    A dialog's own keypress timeout comes from ``parentApp`` (npyscreen sets it
    only for forms that have one), so pass ``parentApp=app`` when making one.
    """

    parentApp: ConvocateApp

    def while_waiting(self) -> None:
        self.parentApp.tick()

    def edit(self) -> None:
        self.parentApp.dialogs.append(self)
        try:
            super().edit()  # type: ignore[misc]
        finally:
            self.parentApp.dialogs.remove(self)


class Dialog(Ticking, npyscreen.ActionPopup):
    """A popup with OK and Cancel; Esc cancels at once. ``accepted`` says which button ended it."""

    accepted = False

    def on_ok(self) -> bool:
        self.accepted = True
        return False

    def on_cancel(self) -> bool:
        self.accepted = False
        return False

    def find_cancel_button(self) -> None:  # Esc in any field
        self.accepted = False
        self.editing = False


class SessionForm(Dialog):
    """Fields of a new or edited session (their rules: :mod:`convocate.tui.fields`)."""

    DEFAULT_LINES = 16
    DEFAULT_COLUMNS = 66

    def create(self) -> None:
        self.fields: dict[str, Any] = {}
        for key in FIELDS:
            self.fields[key] = self.add(npyscreen.TitleText, name=f"{LABELS[key]}:", begin_entry_at=16)
            if key == "port":
                self.add(npyscreen.FixedText, value="  (port: blank none, 0 auto, else 1-65535)", editable=False)
        self.fields["protocol"].value = "tcp"
        self.start_now = self.add(npyscreen.Checkbox, name="Start now", value=True)
        self.attach_now = self.add(npyscreen.Checkbox, name="Attach right away", value=True)

    def values(self) -> SessionFields:
        """What the operator typed."""
        return SessionFields(**{key: widget.value or "" for key, widget in self.fields.items()})

    def fill(self, values: SessionFields) -> None:
        for key, widget in self.fields.items():
            widget.value = getattr(values, key)

    def focus(self, key: str | None) -> None:
        """Put the cursor on field ``key`` (the first field for None) when the form is edited next."""
        self.preserve_selected_widget = True
        self.editw = self._widgets__.index(self.fields[key or FIELDS[0]])


class MessagePopup(Ticking, npyscreen.Popup):
    """A message with an OK button (npyscreen's ``notify_confirm``, but ticking, and below the header)."""

    SHOW_ATY = 2  # the header (title, clock) stays in sight above it
    DEFAULT_COLUMNS = 66


class WideMessagePopup(MessagePopup):
    """A :class:`MessagePopup` across the whole width, for long agent errors."""

    DEFAULT_LINES = 14
    DEFAULT_COLUMNS = None
    SHOW_ATX = 0


class ChoicePopup(Ticking, npyscreen.Popup):
    """A popup with a list to pick from and an OK button."""


class WaitingList(npyscreen.MultiLineAction):
    """The waiting sessions (values: ``(agent_id, SessionView)``); Enter picks the highlighted one."""

    width_hint = 60

    def display_value(self, item: tuple[str, SessionView]) -> str:
        agent_id, view = item
        since = time.strftime("%H:%M", time.localtime(view.meta.activity_at / 1e9)) if view.meta.activity_at else "--:--"
        text = f"{view.meta.name[:20]:<20} {agent_id:<8} {since}  ? {view.meta.activity_detail or 'needs the operator'}"
        return text[: self.width_hint]

    def actionHighlighted(self, item: tuple[str, SessionView], key: int) -> None:
        form: WaitingForm = self.parent
        form.chosen, form.accepted = item, True
        form.editing = self.editing = False


class WaitingForm(Dialog):
    """W: the sessions waiting for the operator; Enter (or OK) on one opens its reply box, Esc closes."""

    DEFAULT_LINES = 18
    DEFAULT_COLUMNS = None
    SHOW_ATX = 0
    SHOW_ATY = 2
    chosen: tuple[str, SessionView] | None = None

    def create(self) -> None:
        self.add(npyscreen.FixedText, value=f"{'NAME':<20} {'AGENT':<8} {'SINCE'}  QUESTION", editable=False,
                 color="LABEL")
        self.sessions = self.add(WaitingList, values=[], max_height=-2, scroll_exit=True)

    def on_ok(self) -> bool:
        rows = self.sessions.values
        i = self.sessions.cursor_line
        if self.chosen is None and rows and 0 <= i < len(rows):
            self.chosen = rows[i]
        self.accepted = self.chosen is not None
        return False


class ConfirmPopup(Dialog):
    """A yes/no question; ``y`` answers yes, ``n`` or Esc no, and the buttons work too."""

    OK_BUTTON_TEXT = "Yes (y)"
    CANCEL_BUTTON_TEXT = "No (n)"
    CANCEL_BUTTON_BR_OFFSET = (2, 18)

    def create(self) -> None:
        self.add_handlers({ord("y"): self._yes, ord("Y"): self._yes, ord("n"): self._no, ord("N"): self._no})

    def _answer(self, yes: bool) -> None:
        self.accepted, self.editing = yes, False
        self._widgets__[self.editw].editing = False

    def _yes(self, _key: Any = None) -> None:
        self._answer(True)

    def _no(self, _key: Any = None) -> None:
        self._answer(False)


def orphan_hint(view: SessionView) -> str:
    """The status line for an action on an orphan row: how to move it to an agent."""
    return MIGRATE_HINT.format(name=view.meta.name, id=view.meta.uuid[:8], uuid=view.meta.uuid)


def confirm(app: ConvocateApp, question: str, title: str) -> bool:
    """Ask a yes/no question; True for yes."""
    form = ConfirmPopup(name=title, lines=10, columns=66, parentApp=app)
    form.add(npyscreen.MultiLine, values=textwrap.wrap(question, 60), editable=False, max_height=4)
    form.edit()
    return form.accepted


def choose(app: ConvocateApp, title: str, question: str, options: list[str]) -> int | None:
    """A popup list; returns the chosen index or None."""
    form = ChoicePopup(name=title, lines=min(8 + len(options), 20), columns=66, parentApp=app)
    form.add(npyscreen.FixedText, value=question, editable=False)
    picker = form.add(npyscreen.SelectOne, values=options, value=[0], max_height=len(options) + 1, scroll_exit=True)
    form.edit()
    return picker.value[0] if picker.value else None


def ask(app: ConvocateApp, title: str, question: str, default: str) -> str:
    """A one-line text popup; returns the text, ``""`` when cancelled."""
    form = Dialog(name=title, lines=9, columns=66, parentApp=app)
    form.add(npyscreen.FixedText, value=question, editable=False)
    field = form.add(npyscreen.Textfield, value=default)
    form.edit()
    return field.value.strip() if form.accepted else ""


def notify(app: ConvocateApp, message: str, title: str, wide: bool = False) -> None:
    """Show ``message`` until the operator presses Enter (on OK) or Esc."""
    form = (WideMessagePopup if wide else MessagePopup)(name=title, color="STANDOUT", parentApp=app)
    pager = form.add(npyscreen.Pager)
    lines: list[str] = []
    for paragraph in message.split("\n"):  # no break inside "1-64" or "a-z": rules stay readable
        lines.extend(textwrap.wrap(paragraph, pager.width - 1, break_on_hyphens=False) or [""])
    pager.values = lines
    form.preserve_selected_widget = True
    form.editw = 1  # the OK button
    form.edit()


def stage(form: Any) -> None:
    """Copy a form's pad to the virtual screen without updating the terminal (``pnoutrefresh``)."""
    rows, columns = form._max_physical()
    with contextlib.suppress(curses.error):
        form.curses_pad.noutrefresh(form.show_from_y, form.show_from_x, form.show_aty, form.show_atx, rows, columns)
