"""The agent's settings, credentials (issue 15) and trash: ``settings-*``, ``credential_*``, ``trash``, ``restore``.

Part of :class:`~convocate_agent.service.AgentService` as a mixin (why, in that module's docstring).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from convocate.common.credentials import CredentialStore, resolved_name, summaries
from convocate.common.errors import DockerError
from convocate.common.model import SessionMeta, SessionView, parse_trash_id
from convocate.common.ops.params import (
    CredentialDeleteParams,
    CredentialListParams,
    CredentialSetParams,
    RestoreParams,
    SettingsGetParams,
    SettingsSetParams,
    TrashParams,
)
from convocate.common.paths import Paths
from convocate.common.protocol import CONTAINER_CREATED, CONTAINER_EDITED
from convocate.common.timefmt import format_rfc3339, now_ns
from convocate_agent.locks import SessionLocks
from convocate_agent.settings import Settings, save_settings
from convocate_agent.state import SessionState
from convocate_agent.store import SessionStore
from convocate_agent.trash import NS_PER_DAY

log = logging.getLogger("convocate_agent.service")  # the name the agent's op log lines had before the split


class AdminOps:
    """``settings_get``/``settings_set``, ``credential_set``/``_list``/``_delete``, ``trash``, ``restore``, ``purge_trash``.

    Owns nothing of its own: it replaces ``settings`` and drops ``_fingerprint_cache`` (the core's
    credential fingerprints) when the store changes. The annotations below are every shared part
    it uses; :class:`~convocate_agent.service.AgentService` provides them.
    """

    # Shared parts (AgentService.__init__).
    paths: Paths
    settings: Settings
    store: SessionStore
    locks: SessionLocks
    state: SessionState
    credentials: CredentialStore
    _names_lock: asyncio.Lock
    _fingerprint_cache: tuple[int, dict[str, str]] | None
    # Of the core (AgentService).
    _view: Callable[..., SessionView]
    _wire: Callable[..., Awaitable[dict[str, Any]]]
    _emit: Callable[..., None]
    _fingerprints: Callable[[], dict[str, str]]
    # Of the lifecycle group (LifecycleOps), the names group (NameChecks) and the activity group (ActivityOps).
    _refuse_if_draining: Callable[[], None]
    _others: Callable[[str], list[SessionMeta]]
    reschedule_resumes: Callable[[], int]

    # --- settings ---------------------------------------------------------------------------
    async def settings_get(self, params: SettingsGetParams) -> dict[str, Any]:
        return self.settings.to_json()

    async def settings_set(self, params: SettingsSetParams) -> dict[str, Any]:
        """Validate a partial update (``params.values``), persist it atomically, and return the new settings."""
        values = params.values
        updated = self.settings.updated(values)
        await asyncio.to_thread(save_settings, self.paths.agent_settings, updated)
        self.settings = updated
        log.info("settings changed: %s", ", ".join(sorted(values)) or "nothing")
        if {"resume_after_limit", "resume_message"} & set(values):
            self.reschedule_resumes()
        return updated.to_json()

    # --- credentials (issue 15) ------------------------------------------------------------
    async def credential_set(self, params: CredentialSetParams) -> dict[str, Any]:
        """Store (or replace) a credential; new and restarted sessions get it. Never returns the secret."""
        credential = await asyncio.to_thread(self.credentials.put, params.name, params.kind, params.secret)
        self._fingerprint_cache = None
        log.info("credential %s (%s) set: %s", credential.name, credential.kind, credential.fingerprint)
        await self._announce_credential_change(credential.name)
        return credential.summary()

    async def credential_list(self, params: CredentialListParams) -> list[dict[str, Any]]:
        """``[{name, kind, fingerprint, set_at}]`` of every credential this agent holds, by name."""
        return summaries(await asyncio.to_thread(self.credentials.all))

    async def credential_delete(self, params: CredentialDeleteParams) -> dict[str, Any]:
        """Remove a credential; sessions started with it keep it until they stop.

        Raises:
            NotFound: there is no credential of that name.
        """
        try:
            await asyncio.to_thread(self.credentials.delete, params.name)
        finally:
            self._fingerprint_cache = None
        log.info("credential %s removed", params.name)
        await self._announce_credential_change(params.name)
        return {"name": params.name, "deleted": True}

    async def _announce_credential_change(self, name: str) -> None:
        """Publish ``container.edited`` for each session using ``name``, so TUIs mark (or unmark) the stale ones."""
        try:
            containers = await self.state.containers()
        except DockerError as e:
            log.warning("credential %s changed; cannot tell which sessions use it: %s", name, e)
            return
        fingerprints = self._fingerprints()
        for meta in self.state.metas():
            if resolved_name(meta.credential) == name:
                self._emit(CONTAINER_EDITED, meta.uuid,
                           self._view(meta, containers.get(meta.uuid), fingerprints=fingerprints).to_wire())

    # --- trash ------------------------------------------------------------------------
    async def purge_trash(self) -> list[str]:
        """Remove trash entries older than the retention setting; returns their IDs."""
        purged = await asyncio.to_thread(self.store.purge_trash, self.settings.trash_retention_days)
        for trash_id in purged:
            log.info("purged %s from the trash (retention %d days)", trash_id, self.settings.trash_retention_days)
        return purged

    async def trash(self, params: TrashParams) -> list[dict[str, Any]]:
        """Deleted sessions still in the trash, newest first, with when each will be purged."""
        await self.purge_trash()
        retention = self.settings.trash_retention_days * NS_PER_DAY
        out = []
        for entry in await asyncio.to_thread(self.store.trash_entries):
            item: dict[str, Any] = {"trash_id": entry.trash_id, "uuid": entry.uuid,
                                    "deleted_at": format_rfc3339(entry.deleted_at),
                                    "purge_after": format_rfc3339(entry.deleted_at + retention)}
            if entry.meta is not None:
                item.update(name=entry.meta.name, dns_name=entry.meta.dns_name, port=entry.meta.port)
            out.append(item)
        return out

    async def restore(self, params: RestoreParams) -> dict[str, Any]:
        """Bring a deleted session back from the trash, as it was.

        A port or DNS name another session took in the meantime is cleared (and named in ``cleared``).
        """
        self._refuse_if_draining()
        trash_id = params.trash_id
        session_id, _ = parse_trash_id(trash_id)
        await self.purge_trash()
        with self.locks.hold(session_id, "restore"):
            async with self._names_lock:
                meta = await self.state.on_writer(self.store.restore, trash_id)
                others = self._others(session_id)
                changes: dict[str, Any] = {"last_accessed": now_ns()}
                if meta.dns_name and any(o.dns_name == meta.dns_name for o in others):
                    changes["dns_name"] = ""
                if meta.port and any((o.port, o.protocol) == (meta.port, meta.protocol) for o in others):
                    changes["port"] = 0
                cleared = sorted(k for k in changes if k != "last_accessed")
                meta = meta.with_changes(**changes)
                await self.state.save(meta)
        wire = await self._wire(meta, locked=False)
        self._emit(CONTAINER_CREATED, session_id, wire)
        return {"session": wire, "cleared": cleared}
