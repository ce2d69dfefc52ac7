"""hopper: a PostgreSQL job queue whose behaviour lives in versioned SQL."""

from hopper._migrate import MigrationError, migrate

__all__ = ["MigrationError", "migrate"]
