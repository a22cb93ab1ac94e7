"""Data formats, readers and (in later issues) curation steps."""

from tuneloop.data.formats import (
    FORMATS,
    Conversation,
    LoadedData,
    RowError,
    detect_format,
    read_conversations,
    split_prompt,
    to_conversation,
)

__all__ = [
    "FORMATS",
    "Conversation",
    "LoadedData",
    "RowError",
    "detect_format",
    "read_conversations",
    "split_prompt",
    "to_conversation",
]
