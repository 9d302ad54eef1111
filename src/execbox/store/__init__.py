"""Where the service keeps state: API keys and executions. SQLite by default (Redis later, for a fleet)."""

from execbox.store.sqlite import (
    COMPLETED,
    QUEUED,
    RUNNING,
    ExecutionRecord,
    InstanceRecord,
    KeyRecord,
    NameTaken,
    SQLiteStore,
)

__all__ = ["COMPLETED", "QUEUED", "RUNNING", "ExecutionRecord", "InstanceRecord", "KeyRecord", "NameTaken",
           "SQLiteStore"]
