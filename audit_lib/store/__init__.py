"""The evidence store: schema, engine and sessions."""

from audit_lib.store.db import get_engine, session_scope, upgrade
from audit_lib.store import models

__all__ = ["get_engine", "session_scope", "upgrade", "models"]
