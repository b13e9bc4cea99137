"""Pure checks on what callers hand to the file store; each raises a FileStoreError subclass saying why."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath

from autobot.storage.errors import (
    EmptyFileError,
    FileTooLargeError,
    InvalidArgumentError,
    InvalidFilenameError,
)

MAX_FILENAME_BYTES = 255  # what common file systems allow for one name
MAX_ID_CHARS = 255
MAX_METADATA_ITEMS = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 4096
# Control characters break log lines and Content-Disposition headers; NUL truncates C strings.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_EXTENSION = re.compile(r"^\.[a-z0-9]{1,16}$")


def validate_content(content: bytes, max_bytes: int) -> None:
    if not isinstance(content, bytes):
        raise InvalidArgumentError(f"content must be bytes, not {type(content).__name__}")
    size = len(content)
    if size == 0:
        raise EmptyFileError("file is empty")
    if size > max_bytes:
        raise FileTooLargeError(size, max_bytes)


def validate_filename(filename: str) -> None:
    if not isinstance(filename, str):
        raise InvalidFilenameError(f"filename must be a string, not {type(filename).__name__}")
    if not filename.strip():
        raise InvalidFilenameError("filename is empty")
    if "/" in filename or "\\" in filename:
        raise InvalidFilenameError(f"filename {filename!r} contains a path separator")
    if "\x00" in filename:
        raise InvalidFilenameError("filename contains a NUL character")
    if _CONTROL.search(filename):
        raise InvalidFilenameError(f"filename {filename!r} contains a control character")
    if filename in {".", ".."}:
        raise InvalidFilenameError(f"filename {filename!r} is not a file name")
    if len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise InvalidFilenameError(f"filename is longer than {MAX_FILENAME_BYTES} bytes")


def safe_extension(filename: str) -> str:
    """The lower-cased last suffix if it is short and alphanumeric (".pdf"), else "": the stored name never
    carries anything the caller chose beyond that."""
    suffix = PurePosixPath(filename).suffix.lower()
    return suffix if _SAFE_EXTENSION.match(suffix) else ""


def validate_identifier(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise InvalidArgumentError(f"{what} is empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgumentError(f"{what} is longer than {MAX_ID_CHARS} characters")
    if _CONTROL.search(value):
        raise InvalidArgumentError(f"{what} contains a control character")


def validate_optional_identifier(value: str | None, what: str) -> None:
    if value is not None:
        validate_identifier(value, what)


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """A copy of the metadata, checked: string keys and values, bounded sizes."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"metadata must be a mapping, not {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise InvalidArgumentError(f"metadata has {len(metadata)} items; at most {MAX_METADATA_ITEMS}")
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidArgumentError(
                f"metadata key {key!r} must be a non-empty string of at most "
                f"{MAX_METADATA_KEY_CHARS} characters"
            )
        if _CONTROL.search(key):
            raise InvalidArgumentError(f"metadata key {key!r} contains a control character")
        if not isinstance(value, str):
            kind = type(value).__name__
            raise InvalidArgumentError(f"metadata value for {key!r} must be a string, not {kind}")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidArgumentError(
                f"metadata value for {key!r} is longer than {MAX_METADATA_VALUE_CHARS} characters"
            )
        checked[key] = value
    return checked
