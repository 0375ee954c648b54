"""The errors the engine raises.  Each carries a one-line message meant for a
person; the CLI prints it as is and exits non-zero."""


class IngestError(Exception):
    """Base of every error the engine raises on purpose."""


class IntegrityError(IngestError):
    """Stored data failed a check (magic, version, length, checksum or hash):
    it is never returned as data."""


class FormatError(IntegrityError):
    """An object does not parse as the format it claims."""


class NotFound(IngestError):
    """A file id, ref or object does not exist."""


class InvalidName(IngestError, ValueError):
    """A ref, namespace or object key is not acceptable (escapes, NUL, too long)."""


class StoreError(IngestError):
    """The store failed or refused an operation."""
