"""Errors raised by the data layer on bad input.

Every problem with a data file or a frame is reported as a :class:`DataError` whose message names the file,
the frame and the field, e.g. ``water.h5: frame 17, field 'forces': shape (191, 3) != (n_atoms=192, 3)``,
so that a user can find the bad record without a debugger.
"""

from __future__ import annotations

__all__ = ["DataError", "DataFileNotFoundError", "DataWarning", "format_location"]


def format_location(file: str | None = None, frame: int | None = None, field: str | None = None) -> str:
    """``"water.h5: frame 17, field 'forces'"`` — the parts that are known, in that order."""
    where = []
    if frame is not None:
        where.append(f"frame {frame}")
    if field is not None:
        where.append(f"field {field!r}")
    head = str(file) if file is not None else ""
    tail = ", ".join(where)
    if head and tail:
        return f"{head}: {tail}"
    return head or tail


class DataError(ValueError):
    """Bad input data: a malformed, corrupt or physically impossible file or frame.

    Attributes:
        file: the file (or directory) the data came from, as given by the caller; ``None`` if unknown.
        frame: 0-based frame index within that source; ``None`` for file-level problems.
        field: the offending field (``"positions"``, ``"forces"``, ``"schema_version"`` …); ``None`` if
            the problem is not tied to one field.
        reason: the description without the location prefix.
    """

    def __init__(
        self, reason: str, *, file: str | None = None, frame: int | None = None, field: str | None = None
    ) -> None:
        self.file = None if file is None else str(file)
        self.frame = None if frame is None else int(frame)
        self.field = field
        self.reason = reason
        location = format_location(self.file, self.frame, self.field)
        super().__init__(f"{location}: {reason}" if location else reason)

    def __reduce__(self):  # keep the keyword-only fields through pickling (DataLoader workers re-raise)
        return (_rebuild, (type(self), self.reason, self.file, self.frame, self.field))


def _rebuild(cls: type, reason: str, file: str | None, frame: int | None, field: str | None) -> DataError:
    return cls(reason, file=file, frame=frame, field=field)


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or directory does not exist (also a :class:`FileNotFoundError`)."""


class DataWarning(UserWarning):
    """Suspicious but tolerated data (e.g. close atoms with ``on_close="warn"``)."""
