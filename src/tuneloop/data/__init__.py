"""Data: formats and readers, normalised rows, and composable curation steps."""

from tuneloop.data.formats import (
    FORMATS,
    Conversation,
    RowOptions,
    detect_format,
    split_prompt,
    to_conversation,
    to_row,
)
from tuneloop.data.readers import (
    LoadedData,
    ReadResult,
    RowError,
    read_conversations,
    read_rows,
)
from tuneloop.data.records import Row

__all__ = [
    "FORMATS",
    "Conversation",
    "LoadedData",
    "ReadResult",
    "Row",
    "RowError",
    "RowOptions",
    "detect_format",
    "read_conversations",
    "read_rows",
    "split_prompt",
    "to_conversation",
    "to_row",
]
