"""AIP-161 update masks, applied to messages with protobuf's own FieldMask utilities."""

from __future__ import annotations

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from cronwire_server.core.errors import InvalidArgument


def mask_paths(
    update: Message,
    mask: field_mask_pb2.FieldMask | None,
    *,
    mutable: frozenset[str],
    output_only: frozenset[str],
) -> field_mask_pb2.FieldMask:
    """The fields of `update` to copy, checked before anything is read or written.

    No mask: every mutable field set in `update`. `*`: every mutable field.
    Naming an immutable or unknown field is INVALID_ARGUMENT; output-only
    fields are ignored (they appear when a client sends back what it read).
    """
    if mask is None or not mask.paths:
        paths = [f.name for f, _ in update.ListFields() if f.name in mutable]
    elif list(mask.paths) == ["*"]:
        paths = sorted(mutable)
    else:
        paths = []
        for path in mask.paths:
            top = path.split(".")[0]
            if top in output_only:
                continue
            if top not in mutable:
                known = ", ".join(sorted(mutable))
                raise InvalidArgument.field("update_mask", f"{path!r} cannot be updated; updatable: {known}")
            paths.append(path)
    checked = field_mask_pb2.FieldMask(paths=paths)
    if not checked.IsValidForDescriptor(update.DESCRIPTOR):  # type: ignore[arg-type]
        raise InvalidArgument.field("update_mask", f"names a field {update.DESCRIPTOR.name} does not have")
    return checked


def merge(current: Message, update: Message, paths: field_mask_pb2.FieldMask) -> None:
    """Copy the masked fields of `update` onto `current`, replacing messages and lists whole."""
    paths.MergeMessage(update, current, replace_message_field=True, replace_repeated_field=True)
