"""The operator's TUI: one table of every session on every agent, and the keys to drive them.

npyscreen owns the main thread and the screen; :class:`~convocate.tui.network.Network`
owns the network on its own thread. Forms only call methods of
:class:`ConvocateApp`; the network's notices are applied to the
:class:`~convocate.tui.model.ClusterModel` in the form's ``while_waiting``
(every 0.2 s, and only repainting when the model changed or the clock ticked).
Every dialog keeps that going while it is open (:class:`~convocate.tui.forms.Ticking`): the header
clock ticks and the table stays live underneath, while the outcomes of ops
(which may open a dialog of their own) wait until the dialog is closed.
The forms and dialogs are :mod:`convocate.tui.forms`'s; the actions that fill in a
form (New, Clone, Edit, Settings, the waiting sessions) :mod:`convocate.tui.actions`'s.

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
from collections.abc import Callable
from typing import Any

import npyscreen

from convocate import image_status
from convocate.cluster import Cluster
from convocate.common import messages
from convocate.common.errors import ConfigError, ConvocateError
from convocate.common.model import ACTIVITY_LIMITED, STATE_CONNECTED, SessionView
from convocate.common.ops.base import PARAMS, OpParams
from convocate.common.ops.params import OverrideParams, RestartParams
from convocate.common.paths import Paths
from convocate.common.timefmt import parse_rfc3339
from convocate.render import until_clock
from convocate.terminal import attach_terminal, follow_moves
from convocate.tui.actions import SessionActions
from convocate.tui.forms import MainForm, choose, confirm, notify, orphan_hint, stage
from convocate.tui.model import ClusterModel, Row
from convocate.tui.network import Network, Notice

log = logging.getLogger(__name__)

MIN_COLUMNS, MIN_LINES = 80, 16
#: How long ncurses waits after ESC for the rest of an escape sequence, in ms (ncurses' default is 1000).
ESCAPE_DELAY_MS = 25


class ConvocateApp(SessionActions, npyscreen.NPSAppManaged):
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
            stage(form)
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
                notify(self, f"{description} failed.\n\nagent {notice.agent_id}: {error}", title="Error", wide=True)

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
            self.message = orphan_hint(row.session)
            return None
        return row.agent_id, row.session

    def _op(self, agent_id: str, params: OpParams[Any], description: str,
            then: Callable[[Any], None] | None = None,
            otherwise: Callable[[ConvocateError], None] | None = None) -> None:
        """Run an op in the background: ``then(result)`` on success; ``otherwise(error)`` (else a dialog) on failure."""
        if self._refused_while_moving(params):
            return
        if then is not None:
            self._followups[description] = then
        if otherwise is not None:
            self._fallbacks[description] = otherwise
        self.message = f"{description}..."
        self.network.call(agent_id, params, description)

    def _refused_while_moving(self, params: OpParams[Any]) -> bool:
        """Show why the op waits when a move of its session is pending (:func:`convocate.move.refuse_while_moving`)."""
        from convocate.move import refuse_while_moving

        try:
            refuse_while_moving(self.cluster.paths.shell_state_dir, str(getattr(params, "id", "") or ""), params.OP)
        except ConvocateError as e:
            notify(self, str(e), title=params.OP.title(), wide=True)
            return True
        return False

    def _confirmed_op(self, op: str, verb: str, question: str) -> None:
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        m = view.meta
        if confirm(self, question.format(name=m.name, id=m.uuid[:8], agent=agent_id), title=verb.title()):
            self._op(agent_id, PARAMS[op](id=m.uuid), f"{verb} {m.name}")  # type: ignore[call-arg]

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
            self.message = orphan_hint(row.session)
            return
        view, agent_id = row.session, row.agent_id
        read_only = False
        if view.state == STATE_CONNECTED:
            choice = choose(self, "Someone is attached", f"{view.meta.name} already has an operator attached.",
                             ["Observe read-only", "Override: detach them and take over", "Cancel"])
            if choice == 0:
                read_only = True
            elif choice == 1:
                self._blocking(agent_id, OverrideParams(id=view.meta.uuid))
            else:
                return
        if not view.running:
            if not confirm(self, f"{view.meta.name} is stopped. Start it and attach?", title="Attach"):
                return
            if self._blocking(agent_id, RestartParams(id=view.meta.uuid)) is None:
                return
        self._attach(agent_id, view, read_only)

    def _blocking(self, agent_id: str, params: OpParams[Any]) -> Any:
        """Run an op and wait for it, for the steps right before an attach; None on failure (shown)."""
        if self._refused_while_moving(params):
            return None
        op = params.OP
        try:
            return self.network.call(agent_id, params, f"{op} {(getattr(params, 'id', '') or '')[:8]}").result(60)
        except ConvocateError:
            return None  # the failed notice shows the error
        except Exception as e:  # timeout
            notify(self, f"{op} did not answer: {e}", title="Error")
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
            notify(self, f"attach {view.meta.name}: {error}", title="Attach", wide=True)
        self.main_form._resize()  # the terminal may have changed size while attached

    def replay(self) -> None:
        """P: play the selected session's recording in this terminal (``convocate replay``), back on q."""
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        from convocate import player, replay

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
            note = player.play_in_terminal(casts, view.meta.name)
        except ConvocateError as e:
            note = str(e)
        finally:
            curses.reset_prog_mode()
            self.main_form.curses_pad.clear()
        self.message = f"replay {view.meta.name}: {note}" if note else f"replayed {view.meta.name}"
        self.main_form._resize()  # the terminal may have changed size meanwhile

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

    def quit(self) -> None:
        self.switchForm(None)
        self.main_form.editing = False


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
