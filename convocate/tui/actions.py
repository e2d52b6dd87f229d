"""The TUI's actions that fill in a form: New, Clone, Edit, Settings, and the sessions waiting for the operator.

:class:`SessionActions` is mixed into :class:`~convocate.tui.app.ConvocateApp`: it reads the app's
model, cluster and network and runs ops through its ``_op``, ``_blocking``, ``_session`` and
``_attach``. The fields' rules are :mod:`convocate.tui.fields`'s; the agent has the last word.
"""

from __future__ import annotations

import curses.ascii
import textwrap
from typing import Any

import npyscreen

from convocate.common import messages
from convocate.common.errors import ConvocateError
from convocate.common.model import SessionView
from convocate.common.ops import params as rpc
from convocate.placement import Choice
from convocate.tui.fields import LABELS, FieldError, SessionFields, session_params
from convocate.tui.forms import Dialog, SessionForm, WaitingForm, ask, choose, confirm, notify
from convocate.tui.model import UNREACHABLE

#: The New form's first agent choice: placement picks the agent (issue 18).
AUTO_AGENT = "auto: the agent with the most headroom"


class SessionActions:
    """N, C, E, S, w and W, as methods of the app (see the module docstring for what they need of it)."""

    def new(self) -> None:
        """N: create a session; with several agents, on the one placement picks (the default) or a chosen one."""
        agents = sorted(aid for aid, info in self.model.agents.items() if info.reach != UNREACHABLE)
        if not agents:
            notify(self, "No agent is reachable.", title="New session")
            return
        agent_id: str | None = agents[0]
        if len(agents) > 1:
            choice = choose(self, "New session", "On which agent?", [AUTO_AGENT, *agents, "Cancel"])
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
            notify(self, str(fleet.no_agent_admits(choices)), title="New session", wide=True)
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
            if attach_after and isinstance(result, SessionView):
                self._attach(target, result, False)

        def otherwise(error: ConvocateError) -> None:
            self._refused(form, target, error)
            self._create(agent_id, form)  # placed again: the agent that refused ranks lower or not at all

        self._op(target, rpc.CreateParams(**params), description, then, otherwise)

    def _fill_in(self, form: SessionForm, op: str, session_id: str | None = None) -> dict[str, Any] | None:
        """Edit ``form`` until the agent's rules accept every value (each refusal says why); None when cancelled."""
        while True:
            form.edit()
            if not form.accepted:
                return None
            try:
                return session_params(form.values(), op, session_id)
            except FieldError as e:
                notify(self, "\n\n".join((messages.FORM_REFUSED.format(form=form.name, label=LABELS[e.field]),
                                            str(e), messages.FORM_VALUES_KEPT)), title=form.name)
                form.focus(e.field)

    def _refused(self, form: SessionForm, agent_id: str, error: ConvocateError) -> None:
        """Say why the agent refused the form's values; the form comes back with them, cursor on the first field."""
        text = (messages.FORM_AGENT_REFUSED.format(form=form.name, agent_id=agent_id), str(error),
                messages.FORM_VALUES_KEPT)
        notify(self, "\n\n".join(text), title=form.name, wide=True)
        form.focus(None)

    def clone(self) -> None:
        """C: copy the selected session's home into a new session."""
        picked = self._session()
        if picked is None:
            return
        agent_id, view = picked
        name = ask(self, "Clone", f"Name of the copy of {view.meta.name}:", f"{view.meta.name} copy"[:64])
        if name:
            self._op(agent_id, rpc.CloneParams(source_id=view.meta.uuid, name=name), f"clone {view.meta.name}")

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
            if needs_restart and confirm(
                    self, f"{name}'s port and limits change at its next start. Restart it now?", title="Restart"):
                self._op(agent_id, rpc.RestartParams(id=m.uuid), f"restart {name}")

        def otherwise(error: ConvocateError) -> None:
            self._refused(form, agent_id, error)
            self._edit(agent_id, view, form)

        self._op(agent_id, rpc.EditParams(**params), f"edit {m.name}", then, otherwise)

    def settings(self) -> None:
        """S: view and change an agent's settings."""
        agents = sorted(aid for aid, info in self.model.agents.items() if info.reach != UNREACHABLE)
        row = self.main_form.selected()
        agent_id = row.agent_id if row is not None and row.agent_id in agents else (agents[0] if agents else None)
        if agent_id is None:
            notify(self, "No agent is reachable.", title="Settings")
            return
        current = self._blocking(agent_id, rpc.SettingsGetParams())
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
            self._op(agent_id, rpc.SettingsSetParams(values=changes), f"settings of {agent_id}")

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
        self._op(agent_id, rpc.SendParams(id=view.meta.uuid, text=text, enter=True), f"reply to {view.meta.name}")


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
