"""The operator's TUI: one table of every session on every agent, and the keys to drive them.

npyscreen owns the main thread and the screen; :class:`~convocate.tui.network.Network`
owns the network on its own thread. Forms only call methods of
:class:`ConvocateApp`; the network's notices are applied to the
:class:`~convocate.tui.model.ClusterModel` in the form's ``while_waiting``
(every 0.2 s, and only repainting when the model changed or the clock ticked).
Every dialog keeps that going while it is open (:class:`Ticking`): the header
clock ticks and the table stays live underneath, while the outcomes of ops
(which may open a dialog of their own) wait until the dialog is closed.

Escape: ncurses waits ``ESCDELAY`` (1000 ms by default) after an ESC byte for
the rest of an escape sequence, and npyscreen turns a key that comes within
that wait into Alt+key, which nothing is bound to: the key after Escape was
lost. The TUI sets the wait to :data:`ESCAPE_DELAY_MS` (an escape sequence's
bytes arrive together), unless the operator set ``ESCDELAY`` themselves.

Keys: Enter attach, 1-9 jump to a row, w jump to the next waiting session,
W list the waiting sessions and reply to one without attaching, P replay the session's
terminal recording (``convocate replay``, q comes back), N new, C clone,
E edit, B background, D delete, K kill, O override, S settings, R restart, Q quit.
"""

from __future__ import annotations

import contextlib
import curses
import curses.ascii
import logging
import os
import queue
import signal
import textwrap
import time
from collections.abc import Callable
from typing import Any

import npyscreen

from convocate import image_status
from convocate.client import Cluster
from convocate.common import messages
from convocate.common.errors import ConfigError, ConvocateError
from convocate.common.model import ACTIVITY_LIMITED, STATE_CONNECTED, SessionView
from convocate.common.paths import Paths
from convocate.common.timefmt import parse_rfc3339
from convocate.orphans import MIGRATE_HINT
from convocate.placement import Choice
from convocate.render import until_clock
from convocate.terminal import attach_terminal, follow_moves
from convocate.tui.fields import FIELDS, LABELS, FieldError, SessionFields, session_params
from convocate.tui.model import UNREACHABLE, ClusterModel, Row, header
from convocate.tui.network import Network, Notice

log = logging.getLogger(__name__)

MIN_COLUMNS, MIN_LINES = 80, 16
#: The New form's first agent choice: placement picks the agent (issue 18).
AUTO_AGENT = "auto: the agent with the most headroom"
#: How long ncurses waits after ESC for the rest of an escape sequence, in ms (ncurses' default is 1000).
ESCAPE_DELAY_MS = 25
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


class ConvocateApp(npyscreen.NPSAppManaged):
    """The TUI application: the model, the network, and every operator action.

    Args:
        cluster: The registered agents.
    """

    keypress_timeout_default = 2  # tenths of a second between while_waiting calls

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster
        self.model = ClusterModel({aid: c.record.endpoint for aid, c in cluster.clients.items()})
        self.inbox: queue.SimpleQueue[tuple[Notice, Callable[[Any], None] | None]] = queue.SimpleQueue()
        self.network = Network(cluster, lambda notice: self.inbox.put((notice, None)))
        self.message = ""
        self._numbers: dict[int, int] = {}
        self._followups: dict[str, Callable[[Any], None]] = {}
        self._fallbacks: dict[str, Callable[[ConvocateError], None]] = {}
        self._deferred: list[Notice] = []
        self.dialogs: list[Any] = []  # the open dialogs, innermost last (see Ticking)

    def onStart(self) -> None:
        if "ESCDELAY" not in os.environ:  # ncurses read it at initscr; an operator's own value wins
            curses.set_escdelay(ESCAPE_DELAY_MS)
        self.main_form = self.addForm("MAIN", MainForm, name="convocate", minimum_lines=MIN_LINES,
                                      minimum_columns=MIN_COLUMNS)
        self.message = image_status.packaged_problem(self.cluster.paths) or ""
        self.network.start()

    def onCleanExit(self) -> None:
        self.network.stop()

    # --- notices from the network ----------------------------------------------------
    def drain(self, *, under_dialog: bool = False) -> None:
        """Apply every pending notice to the model (UI thread).

        Args:
            under_dialog: A dialog is open: the outcome of an op (``done``,
                ``failed``: they may open a dialog of their own) waits for the
                next drain without one; everything else is applied now.
        """
        if not under_dialog:
            deferred, self._deferred = self._deferred, []
            for notice in deferred:
                self.apply(notice)
        while True:
            try:
                notice, _ = self.inbox.get_nowait()
            except queue.Empty:
                return
            if under_dialog and notice.kind in ("done", "failed"):
                self._deferred.append(notice)
            else:
                self.apply(notice)

    def tick(self) -> None:
        """While a dialog waits for a key: bring the main form up to date underneath, the dialogs staying on top.

        The main form and then each open dialog are copied to the virtual screen
        and the terminal is updated once, so only what changed (the clock) is sent.
        """
        self.drain(under_dialog=True)
        if not self.main_form.paint():
            return
        for form in (self.main_form, *self.dialogs):
            _stage(form)
        curses.doupdate()

    def apply(self, notice: Notice) -> None:
        if notice.kind == "reach":
            reach, reason = notice.payload
            self.model.set_reach(notice.agent_id, reach, reason)
        elif notice.kind == "sessions":
            self.model.replace_sessions(notice.agent_id, notice.payload)
        elif notice.kind == "capacity":
            self.model.set_capacity(notice.agent_id, notice.payload)
        elif notice.kind == "orphans":
            self.model.set_orphans(notice.payload)
        elif notice.kind == "status":
            message = notice.payload
            data = message.get("data") if isinstance(message.get("data"), dict) else {}
            if message.get("type") == "session.activity" and data.get("activity") == "waiting" \
                    and data.get("previous") != "waiting":
                self.message = f"{data.get('name', '?')} is waiting: {data.get('detail', '')}  (w jumps there, W replies)"
                with contextlib.suppress(curses.error):
                    curses.beep()  # a session needs the operator
            elif message.get("type") == "session.activity" and data.get("activity") == ACTIVITY_LIMITED:
                until = data.get("until")
                try:
                    until_text = f" until {until_clock(parse_rfc3339(until))}" if isinstance(until, str) else ""
                except ValueError:
                    until_text = ""
                self.message = messages.SESSION_LIMITED.format(name=data.get("name", "?"), until=until_text,
                                                               detail=data.get("detail", ""))
            if self.model.apply(message):
                self.network.refresh(notice.agent_id)
        elif notice.kind == "done":
            description, result = notice.payload
            self.message = f"{description}: done"
            self._fallbacks.pop(description, None)
            followup = self._followups.pop(description, None)
            if followup is not None:
                followup(result)
        elif notice.kind == "failed":
            description, error = notice.payload
            self._followups.pop(description, None)
            fallback = self._fallbacks.pop(description, None)
            self.message = f"{description}: failed"
            if fallback is not None:
                fallback(error)
            else:
                _notify(self, f"{description} failed.\n\nagent {notice.agent_id}: {error}", title="Error", wide=True)

    def refresh_rows(self, form: MainForm) -> None:
        """Give the table the model's rows, keeping the cursor on the same session."""
        current = form.selected()
        rows = self.model.rows()
        self._numbers = {}
        number = 0
        for row in rows:
            if row.session is not None:
                number += 1
                self._numbers[id(row)] = number
        form.table.values = rows
        if current is not None:
            for i, row in enumerate(rows):
                if (row.agent_id, row.session and row.session.meta.uuid) == \
                        (current.agent_id, current.session and current.session.meta.uuid):
                    form.table.cursor_line = i
                    break
        form.table.cursor_line = max(0, min(form.table.cursor_line, len(rows) - 1))

    def number_of(self, row: Row) -> int:
        return self._numbers.get(id(row), 0)

    # --- helpers ---------------------------------------------------------------------------
    def _session(self) -> tuple[str, SessionView] | None:
        row = self.main_form.selected()
        if row is None or row.session is None:
            self.message = "select a session first"
            return None
        if row.session.orphan:
            self.message = _orphan_hint(row.session)
            return None
        return row.agent_id, row.session

    def _op(self, agent_id: str, op: str, params: dict[str, Any], description: str,
            then: Callable[[Any], None] | None = None,
            otherwise: Callable[[ConvocateError], None] | None = None) -> None:
        """Run an op in the background: ``then(result)`` on success; ``otherwise(error)`` (else a dialog) on failure."""
        if self._refused_while_moving(op, params):
            return
        if then is not None:
            self._followups[description] = then
        if otherwise is not None:
            self._fallbacks[description] = otherwise
        self.message = f"{description}..."
        self.network.call(agent_id, op, params, description)

    def _refused_while_moving(self, op: str, params: dict[str, Any]) -> bool:
        """Show why ``op`` waits when a move of its session is pending (:func:`convocate.move.refuse_while_moving`)."""
        from convocate.move import refuse_while_moving

        try:
            refuse_while_moving(self.cluster.paths.shell_state_dir, str(params.get("id", "")), op)
        except ConvocateError as e:
            _notify(self, str(e), title=op.title(), wide=True)
            return True
        return False

    def _confirmed_op(self, op: str, verb: str, question: str) -> None:
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        m = view.meta
        if _confirm(self, question.format(name=m.name, id=m.uuid[:8], agent=agent_id), title=verb.title()):
            self._op(agent_id, op, {"id": m.uuid}, f"{verb} {m.name}")

    # --- actions ------------------------------------------------------------------------------
    def attach(self, row: Row | None = None) -> None:
        """Enter: attach to the selected session (start it first if stopped; on C offer observe or override)."""
        row = row or self.main_form.selected()
        if row is None:
            return
        if row.session is None:
            self.network.refresh(row.agent_id)
            self.message = f"agent {row.agent_id}: trying again"
            return
        if row.session.orphan:
            self.message = _orphan_hint(row.session)
            return
        view, agent_id = row.session, row.agent_id
        read_only = False
        if view.state == STATE_CONNECTED:
            choice = _choose(self, "Someone is attached", f"{view.meta.name} already has an operator attached.",
                             ["Observe read-only", "Override: detach them and take over", "Cancel"])
            if choice == 0:
                read_only = True
            elif choice == 1:
                self._blocking(agent_id, "override", {"id": view.meta.uuid})
            else:
                return
        if not view.running:
            if not _confirm(self, f"{view.meta.name} is stopped. Start it and attach?", title="Attach"):
                return
            if self._blocking(agent_id, "restart", {"id": view.meta.uuid}) is None:
                return
        self._attach(agent_id, view, read_only)

    def _blocking(self, agent_id: str, op: str, params: dict[str, Any]) -> Any:
        """Run an op and wait for it, for the steps right before an attach; None on failure (shown)."""
        if self._refused_while_moving(op, params):
            return None
        try:
            return self.network.call(agent_id, op, params, f"{op} {params.get('id', '')[:8]}").result(60)
        except ConvocateError:
            return None  # the failed notice shows the error
        except Exception as e:  # timeout
            _notify(self, f"{op} did not answer: {e}", title="Error")
            return None

    def _attach(self, agent_id: str, view: SessionView, read_only: bool) -> None:
        """Suspend the screen, relay the terminal to the session, and come back where we were."""
        client = self.cluster.client(agent_id)
        handlers: list[Callable[[], None]] = []

        def watch_resize(handler: Callable[[], None]) -> Callable[[], None]:
            handlers.append(handler)
            return handlers.clear

        def on_winch(_signum: int, _frame: Any) -> None:
            for handler in list(handlers):
                self.network.loop.call_soon_threadsafe(handler)

        curses.def_prog_mode()
        curses.endwin()
        previous = signal.signal(signal.SIGWINCH, on_winch)
        error: str = ""
        try:
            client = self.network.run_blocking(attach_terminal(
                client, view.meta.uuid, view.meta.name, read_only=read_only, watch_resize=watch_resize,
                relocate=follow_moves(self.cluster, view.meta.uuid)))
            agent_id = client.agent_id  # another agent's if the session moved meanwhile
        except ConvocateError as e:
            error = str(e)
        finally:
            signal.signal(signal.SIGWINCH, previous)
            curses.reset_prog_mode()
            self.main_form.curses_pad.clear()
        self.network.refresh(agent_id)
        self.message = f"attach {view.meta.name}: {error}" if error else f"detached from {view.meta.name}"
        if error:
            _notify(self, f"attach {view.meta.name}: {error}", title="Attach", wide=True)
        self.main_form._resize()  # the terminal may have changed size while attached

    def replay(self) -> None:
        """P: play the selected session's recording in this terminal (``convocate replay``), back on q."""
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        from convocate import replay

        target = replay.Target(self.cluster.client(agent_id), view.meta.uuid, view.meta.name)
        try:
            casts = self.network.run_blocking(replay.fetch(target))
        except ConvocateError as e:
            self.message = f"replay {view.meta.name}: {e}"
            return
        if not any(c.events for c in casts):
            self.message = messages.REPLAY_NOTHING.format(name=view.meta.name, window="")
            return
        curses.def_prog_mode()
        curses.endwin()
        note = ""
        try:
            note = replay.play_in_terminal(casts, view.meta.name)
        except ConvocateError as e:
            note = str(e)
        finally:
            curses.reset_prog_mode()
            self.main_form.curses_pad.clear()
        self.message = f"replay {view.meta.name}: {note}" if note else f"replayed {view.meta.name}"
        self.main_form._resize()  # the terminal may have changed size meanwhile

    def new(self) -> None:
        """N: create a session; with several agents, on the one placement picks (the default) or a chosen one."""
        agents = sorted(aid for aid, info in self.model.agents.items() if info.reach != UNREACHABLE)
        if not agents:
            _notify(self, "No agent is reachable.", title="New session")
            return
        agent_id: str | None = agents[0]
        if len(agents) > 1:
            choice = _choose(self, "New session", "On which agent?", [AUTO_AGENT, *agents, "Cancel"])
            if choice is None or choice > len(agents):
                return
            agent_id = None if choice == 0 else agents[choice - 1]
        title = f"New session on {agent_id}" if agent_id else "New session (placed by capacity)"
        self._create(agent_id, SessionForm(name=title, parentApp=self))

    def _place(self, params: dict[str, Any]) -> Choice | None:
        """Placement's first choice for ``params``' CPUs and memory, or None (and a dialog saying why)."""
        from convocate import fleet

        reachable = [c for aid, c in self.cluster.clients.items() if self.model.agents[aid].reach != UNREACHABLE]
        choices = self.network.run_blocking(fleet.ranking(reachable, params.get("cpus"), params.get("memory_mb")))
        best = next((c for c in choices if c.admits), None)
        if best is None:
            _notify(self, str(fleet.no_agent_admits(choices)), title="New session", wide=True)
            return None
        return best

    def _create(self, agent_id: str | None, form: SessionForm) -> None:
        """Edit the New form until its values pass or it is cancelled, then create; a refusal brings it back.

        ``agent_id`` None: placement picks the agent once the form says how big the session is.
        """
        params = self._fill_in(form, "create")
        if params is None:
            return
        params["start"] = bool(form.start_now.value)
        attach_after = bool(form.attach_now.value) and params["start"]
        description = f"create {params['name']}"
        if agent_id is None:
            placed = self._place(params)
            if placed is None:
                self._create(agent_id, form)
                return
            description = messages.PLACED_CREATE.format(name=params["name"], agent=placed.agent_id,
                                                        reason=placed.reason)
        target = agent_id or placed.agent_id

        def then(result: Any) -> None:
            if attach_after and isinstance(result, dict):
                view = SessionView.from_wire(result, target)
                self._attach(target, view, False)

        def otherwise(error: ConvocateError) -> None:
            self._refused(form, target, error)
            self._create(agent_id, form)  # placed again: the agent that refused ranks lower or not at all

        self._op(target, "create", params, description, then, otherwise)

    def _fill_in(self, form: SessionForm, op: str, session_id: str | None = None) -> dict[str, Any] | None:
        """Edit ``form`` until the agent's rules accept every value (each refusal says why); None when cancelled."""
        while True:
            form.edit()
            if not form.accepted:
                return None
            try:
                return session_params(form.values(), op, session_id)
            except FieldError as e:
                _notify(self, "\n\n".join((messages.FORM_REFUSED.format(form=form.name, label=LABELS[e.field]),
                                            str(e), messages.FORM_VALUES_KEPT)), title=form.name)
                form.focus(e.field)

    def _refused(self, form: SessionForm, agent_id: str, error: ConvocateError) -> None:
        """Say why the agent refused the form's values; the form comes back with them, cursor on the first field."""
        text = (messages.FORM_AGENT_REFUSED.format(form=form.name, agent_id=agent_id), str(error),
                messages.FORM_VALUES_KEPT)
        _notify(self, "\n\n".join(text), title=form.name, wide=True)
        form.focus(None)

    def clone(self) -> None:
        """C: copy the selected session's home into a new session."""
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        name = _ask(self, "Clone", f"Name of the copy of {view.meta.name}:", f"{view.meta.name} copy"[:64])
        if name:
            self._op(agent_id, "clone", {"source_id": view.meta.uuid, "name": name}, f"clone {view.meta.name}")

    def edit(self) -> None:
        """E: change the selected session; offer a restart when a change needs one."""
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        form = SessionForm(name=f"Edit {view.meta.name}", parentApp=self)
        form.fill(SessionFields.of(view.meta))
        form.start_now.hidden = form.attach_now.hidden = True
        self._edit(agent_id, view, form)

    def _edit(self, agent_id: str, view: SessionView, form: SessionForm) -> None:
        """Edit the Edit form until its values pass or it is cancelled, then edit; a refusal brings it back."""
        m = view.meta
        params = self._fill_in(form, "edit", m.uuid)
        if params is None:
            return
        if params.get("port") == 0 and not m.port:
            params.pop("port")
        needs_restart = view.running and (params.get("port", m.port) != m.port or
                                          params.get("protocol", m.protocol) != m.protocol or
                                          params.get("cpus", m.cpus) != m.cpus or
                                          params.get("memory_mb", m.memory_mb) != m.memory_mb)

        name = params.get("name") or m.name

        def then(_result: Any) -> None:
            if needs_restart and _confirm(
                    self, f"{name}'s port and limits change at its next start. Restart it now?", title="Restart"):
                self._op(agent_id, "restart", {"id": m.uuid}, f"restart {name}")

        def otherwise(error: ConvocateError) -> None:
            self._refused(form, agent_id, error)
            self._edit(agent_id, view, form)

        self._op(agent_id, "edit", params, f"edit {m.name}", then, otherwise)

    def background(self) -> None:
        self._confirmed_op("background", "background",
                           "Detach every operator from {name} ({id})? It keeps running.")

    def delete(self) -> None:
        self._confirmed_op("delete", "delete",
                           "Delete {name} ({id}) on agent {agent}? Its home goes to the agent's trash.")

    def kill(self) -> None:
        self._confirmed_op("kill", "kill", "Stop {name} ({id})? Whoever is attached is disconnected.")

    def override(self) -> None:
        self._confirmed_op("override", "override",
                           "Take over {name} ({id})? A stale lock is cleared and attached operators are detached.")

    def restart(self) -> None:
        self._confirmed_op("restart", "restart",
                           "Restart {name} ({id}) from the agent's current image? The session is interrupted.")

    def settings(self) -> None:
        """S: view and change an agent's settings."""
        agents = sorted(aid for aid, info in self.model.agents.items() if info.reach != UNREACHABLE)
        row = self.main_form.selected()
        agent_id = row.agent_id if row is not None and row.agent_id in agents else (agents[0] if agents else None)
        if agent_id is None:
            _notify(self, "No agent is reachable.", title="Settings")
            return
        current = self._blocking(agent_id, "settings-get", {})
        if not isinstance(current, dict):
            return
        form = Dialog(name=f"Settings of agent {agent_id}", lines=len(current) + 6, columns=70, parentApp=self)
        fields = {key: form.add(npyscreen.TitleText, name=f"{key}:", value=str(value), begin_entry_at=26)
                  for key, value in current.items()}
        form.edit()
        if not form.accepted:
            return
        changes: dict[str, Any] = {}
        for key, widget in fields.items():
            text = widget.value.strip()
            if text != str(current[key]):
                changes[key] = _typed_like(text, current[key])
        if changes:
            self._op(agent_id, "settings-set", changes, f"settings of {agent_id}")

    def next_waiting(self) -> None:
        """W: move to the next session waiting for the operator."""
        row = self.main_form.selected()
        after = (row.agent_id, row.session.meta.uuid) if row is not None and row.session is not None else None
        self.refresh_rows(self.main_form)
        index = self.model.next_waiting(after)
        if index is None:
            self.message = messages.NO_SESSION_WAITING
            return
        self.main_form.table.cursor_line = index
        self.main_form.table.display()

    def waiting_list(self) -> None:
        """W: every session waiting for the operator, across agents, with its question; Enter replies to one."""
        waiting = self.model.waiting()
        if not waiting:
            self.message = messages.NO_SESSION_WAITING
            return
        form = WaitingForm(name=f"Waiting for you ({len(waiting)})", parentApp=self)
        width = form.columns - 8
        form.sessions.values = [(v.agent_id, v) for v in waiting]
        form.sessions.width_hint = width
        form.edit()
        if not form.accepted or form.chosen is None:
            return
        agent_id, view = form.chosen
        self.reply(agent_id, view)

    def reply(self, agent_id: str, view: SessionView) -> None:
        """The reply box for one waiting session; its text goes through ``send`` (text, then Enter)."""
        form = Dialog(name=f"Reply to {view.meta.name} on {agent_id}", lines=14, columns=78, parentApp=self)
        question = textwrap.wrap(view.meta.activity_detail or "needs the operator", 70)
        for line in question[:5]:
            form.add(npyscreen.FixedText, value=line, editable=False)
        form.add(npyscreen.FixedText, value="Your answer (Enter sends it, Esc cancels):", editable=False)
        field = form.add(npyscreen.Textfield, value="")

        def send_it(_key: Any) -> None:
            form.accepted = True
            form.editing = field.editing = False

        field.add_handlers({curses.ascii.NL: send_it, curses.ascii.CR: send_it})
        form.edit()
        text = " ".join((field.value or "").split())
        if not form.accepted or not text:
            return
        self._op(agent_id, "send", {"id": view.meta.uuid, "text": text, "enter": True},
                 f"reply to {view.meta.name}")

    def quit(self) -> None:
        self.switchForm(None)
        self.main_form.editing = False


def _typed_like(text: str, example: Any) -> Any:
    """Parse ``text`` as the type of ``example`` (settings keep their JSON types); unparsable stays text."""
    try:
        if isinstance(example, bool):
            return text.lower() in ("1", "true", "yes", "on")
        if isinstance(example, int):
            return int(text)
        if isinstance(example, float):
            return float(text)
    except ValueError:
        return text  # the agent names the field and the rule
    return text


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


def _orphan_hint(view: SessionView) -> str:
    """The status line for an action on an orphan row: how to move it to an agent."""
    return MIGRATE_HINT.format(name=view.meta.name, id=view.meta.uuid[:8], uuid=view.meta.uuid)


def _confirm(app: ConvocateApp, question: str, title: str) -> bool:
    """Ask a yes/no question; True for yes."""
    form = ConfirmPopup(name=title, lines=10, columns=66, parentApp=app)
    form.add(npyscreen.MultiLine, values=textwrap.wrap(question, 60), editable=False, max_height=4)
    form.edit()
    return form.accepted


def _choose(app: ConvocateApp, title: str, question: str, options: list[str]) -> int | None:
    """A popup list; returns the chosen index or None."""
    form = ChoicePopup(name=title, lines=min(8 + len(options), 20), columns=66, parentApp=app)
    form.add(npyscreen.FixedText, value=question, editable=False)
    picker = form.add(npyscreen.SelectOne, values=options, value=[0], max_height=len(options) + 1, scroll_exit=True)
    form.edit()
    return picker.value[0] if picker.value else None


def _ask(app: ConvocateApp, title: str, question: str, default: str) -> str:
    """A one-line text popup; returns the text, ``""`` when cancelled."""
    form = Dialog(name=title, lines=9, columns=66, parentApp=app)
    form.add(npyscreen.FixedText, value=question, editable=False)
    field = form.add(npyscreen.Textfield, value=default)
    form.edit()
    return field.value.strip() if form.accepted else ""


def _notify(app: ConvocateApp, message: str, title: str, wide: bool = False) -> None:
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


def _stage(form: Any) -> None:
    """Copy a form's pad to the virtual screen without updating the terminal (``pnoutrefresh``)."""
    rows, columns = form._max_physical()
    with contextlib.suppress(curses.error):
        form.curses_pad.noutrefresh(form.show_from_y, form.show_from_x, form.show_aty, form.show_atx, rows, columns)


def run_tui(paths: Paths) -> int:
    """Open the TUI on the controlling terminal; returns the exit status.

    Raises:
        ConfigError: no terminal, a terminal too small, or no agent registered
            (the message says what to do).
    """
    import sys

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise ConfigError("the convocate TUI needs a terminal; for scripts use `convocate ls`, "
                          "`convocate attach`, ... (see `convocate help`)")
    columns, lines = os.get_terminal_size()
    if columns < MIN_COLUMNS or lines < MIN_LINES:
        raise ConfigError(f"the terminal is {columns}x{lines}; convocate needs at least {MIN_COLUMNS}x{MIN_LINES}")
    cluster = Cluster(paths)
    logging.lastResort = None  # nothing may write to the screen behind curses
    logging.getLogger().addHandler(logging.NullHandler())
    app = ConvocateApp(cluster)
    cluster.set_warn(lambda text: setattr(app, "message", text))  # a refused operator claim: the status line
    try:
        app.run(fork=False)
    finally:
        app.network.stop()
    return 0
