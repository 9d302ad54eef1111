"""The default store: one SQLite file in WAL mode. API keys (hashed, with their scopes), executions (async
jobs, and the executions of a session), each row owned by the key that created it, and the runtime provider
configuration (instances and the server's routing config; secrets in it are sealed by the caller).

Calls are short single statements on one connection (each well under a millisecond), so they run inline
on the event loop rather than paying a thread hop per call.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    rate_limit_per_min REAL,
    caps TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    session_id TEXT,
    state TEXT NOT NULL,           -- queued | running | completed
    request TEXT,                  -- the request body (JSON), kept until the job has run
    result TEXT,                   -- the result (JSON) once completed
    created_at REAL NOT NULL,
    finished_at REAL,
    expires_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- times a server began running the job
    handed_over_at REAL            -- when its code was handed to a provider: from then on never run again
);
CREATE INDEX IF NOT EXISTS executions_state ON executions (state, created_at);
CREATE INDEX IF NOT EXISTS executions_session ON executions (owner, session_id, created_at);
CREATE TABLE IF NOT EXISTS provider_instances (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    settings TEXT NOT NULL,        -- JSON; secret fields sealed ({"sealed": "..."}), never in clear
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS server_config (
    key TEXT PRIMARY KEY,          -- default_provider | fallback_chain | routing | seeded
    value TEXT NOT NULL,           -- JSON
    updated_at REAL NOT NULL
);
"""
KEY_COLUMNS = "name, key_hash, prefix, rate_limit_per_min, caps, created_at, revoked_at, scopes"

QUEUED, RUNNING, COMPLETED = "queued", "running", "completed"


@dataclass(frozen=True)
class KeyRecord:
    name: str
    key_hash: str
    prefix: str
    rate_limit_per_min: float | None
    caps: dict[str, Any] | None
    created_at: float
    revoked_at: float | None
    scopes: tuple[str, ...] = ()  # e.g. ("admin",)


@dataclass(frozen=True)
class InstanceRecord:
    """A provider instance as stored: its settings JSON with secret fields sealed."""

    name: str
    kind: str
    settings: dict[str, Any]
    updated_at: float


@dataclass(frozen=True)
class ExecutionRecord:
    id: str
    owner: str
    session_id: str | None
    state: str
    request: str | None
    result: dict[str, Any] | None
    created_at: float
    finished_at: float | None
    handed_over: bool = False  # its code was handed to a provider (it may have run)


class NameTaken(ValueError):
    pass


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            os.close(os.open(f, os.O_WRONLY | os.O_CREAT, 0o600))  # results and key hashes: owner only
            f.chmod(0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()  # the CLI and tests may share a store across threads
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(executions)")}
        if "attempts" not in columns:  # a store made before jobs counted their attempts
            self._db.execute("ALTER TABLE executions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
        if "handed_over_at" not in columns:  # ... or recorded the handover of their code
            self._db.execute("ALTER TABLE executions ADD COLUMN handed_over_at REAL")
        if "scopes" not in {row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")}:  # ... keys' scopes
            self._db.execute("ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def ping(self) -> None:
        self._q("SELECT 1")

    # --- API keys
    def add_key(self, name: str, key_hash: str, prefix: str, rate_limit_per_min: float | None,
                caps: dict[str, Any] | None, scopes: tuple[str, ...] = ()) -> KeyRecord:
        try:
            self._q(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                    (name, key_hash, prefix, rate_limit_per_min, json.dumps(caps) if caps else None, time.time(),
                     " ".join(scopes)))
        except sqlite3.IntegrityError as e:
            raise NameTaken(f"a key named {name!r} exists already") from e
        key = self.key_by_name(name)
        assert key is not None
        return key

    def _key(self, row: tuple[Any, ...]) -> KeyRecord:
        return KeyRecord(row[0], row[1], row[2], row[3], json.loads(row[4]) if row[4] else None, row[5], row[6],
                         tuple(row[7].split()))

    def key_by_hash(self, key_hash: str) -> KeyRecord | None:
        rows = self._q(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,))
        return self._key(rows[0]) if rows else None

    def key_by_name(self, name: str) -> KeyRecord | None:
        rows = self._q(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE name = ?", (name,))
        return self._key(rows[0]) if rows else None

    def keys(self) -> list[KeyRecord]:
        return [self._key(r) for r in self._q(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at")]

    def revoke_key(self, name: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                                   (time.time(), name))
            return cur.rowcount > 0

    # --- executions
    def add_execution(self, id: str, owner: str, session_id: str | None, state: str, request: str | None = None,
                      result: dict[str, Any] | None = None, ttl_s: float | None = None) -> None:
        now = time.time()
        done = state == COMPLETED
        self._q("INSERT INTO executions (id, owner, session_id, state, request, result, created_at, finished_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (id, owner, session_id, state, request, json.dumps(result) if result is not None else None, now,
                 now if done else None, now + ttl_s if done and ttl_s else None))

    def mark_running(self, id: str) -> int:
        """Mark a job running; how many times a server has begun it, this one included."""
        rows = self._q("UPDATE executions SET state = ?, attempts = attempts + 1 WHERE id = ? RETURNING attempts",
                       (RUNNING, id))
        return int(rows[0][0]) if rows else 0

    def mark_handed_over(self, id: str) -> None:
        """The job's code is being handed to a provider: a server that dies from now on leaves its outcome
        unknown (it is reported so, never run again)."""
        self._q("UPDATE executions SET handed_over_at = ? WHERE id = ?", (time.time(), id))

    def requeue(self, id: str) -> None:
        """A job the server stopped in an orderly way: queued again, and the attempt does not count."""
        self._q("UPDATE executions SET state = ?, attempts = MAX(attempts - 1, 0) WHERE id = ? AND state = ?",
                (QUEUED, id, RUNNING))

    def complete(self, id: str, result: dict[str, Any], ttl_s: float) -> None:
        now = time.time()
        self._q("UPDATE executions SET state = ?, result = ?, request = NULL, finished_at = ?, expires_at = ? "
                "WHERE id = ?", (COMPLETED, json.dumps(result), now, now + ttl_s, id))

    def _execution(self, row: tuple[Any, ...]) -> ExecutionRecord:
        return ExecutionRecord(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]) if row[5] else None,
                               row[6], row[7], row[10] is not None)

    def execution(self, id: str, owner: str) -> ExecutionRecord | None:
        rows = self._q("SELECT * FROM executions WHERE id = ? AND owner = ? AND (expires_at IS NULL OR "
                       "expires_at > ?)", (id, owner, time.time()))
        return self._execution(rows[0]) if rows else None

    def job(self, id: str) -> ExecutionRecord | None:
        """An execution by id whoever owns it (for the job runner)."""
        rows = self._q("SELECT * FROM executions WHERE id = ?", (id,))
        return self._execution(rows[0]) if rows else None

    def session_executions(self, owner: str, session_id: str, limit: int = 1000) -> list[ExecutionRecord]:
        rows = self._q("SELECT * FROM executions WHERE owner = ? AND session_id = ? AND (expires_at IS NULL OR "
                       "expires_at > ?) ORDER BY created_at LIMIT ?", (owner, session_id, time.time(), limit))
        return [self._execution(r) for r in rows]

    def unfinished(self) -> list[ExecutionRecord]:
        """Jobs queued or running when the last server stopped, oldest first: they run again."""
        rows = self._q("SELECT * FROM executions WHERE state != ? ORDER BY created_at", (COMPLETED,))
        return [self._execution(r) for r in rows]

    def count_unfinished(self, owner: str | None = None) -> int:
        if owner is None:
            return int(self._q("SELECT COUNT(*) FROM executions WHERE state != ?", (COMPLETED,))[0][0])
        return int(self._q("SELECT COUNT(*) FROM executions WHERE state != ? AND owner = ?",
                           (COMPLETED, owner))[0][0])

    def expire(self) -> int:
        with self._lock:
            cur = self._db.execute("DELETE FROM executions WHERE expires_at IS NOT NULL AND expires_at <= ?",
                                   (time.time(),))
            return cur.rowcount

    # --- provider configuration (the server's source once seeded; see execbox.server.provider_admin)
    def seed(self, instances: dict[str, tuple[str, dict[str, Any]]], config: dict[str, Any]) -> bool:
        """Write the first configuration, once: False when the store was seeded already (by this process or
        another one starting at the same time: the check and the writes are one transaction)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM server_config WHERE key = 'seeded'").fetchall():
                    self._db.execute("ROLLBACK")
                    return False
                for name, (kind, settings) in instances.items():
                    self._db.execute("INSERT OR REPLACE INTO provider_instances VALUES (?, ?, ?, ?)",
                                     (name, kind, json.dumps(settings), now))
                for key, value in {**config, "seeded": True}.items():
                    self._db.execute("INSERT OR REPLACE INTO server_config VALUES (?, ?, ?)",
                                     (key, json.dumps(value), now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def put_instance(self, name: str, kind: str, settings: dict[str, Any]) -> None:
        self._q("INSERT OR REPLACE INTO provider_instances VALUES (?, ?, ?, ?)",
                (name, kind, json.dumps(settings), time.time()))

    def delete_instance(self, name: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM provider_instances WHERE name = ?", (name,)).rowcount > 0

    def instances(self) -> dict[str, InstanceRecord]:
        rows = self._q("SELECT name, kind, settings, updated_at FROM provider_instances ORDER BY name")
        return {r[0]: InstanceRecord(r[0], r[1], json.loads(r[2]), r[3]) for r in rows}

    def put_config(self, values: dict[str, Any]) -> None:
        """Set server config keys, all at once (one transaction)."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO server_config VALUES (?, ?, ?)",
                                     [(k, json.dumps(v), now) for k, v in values.items()])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def server_config(self) -> dict[str, Any]:
        return {r[0]: json.loads(r[1]) for r in self._q("SELECT key, value FROM server_config")}
