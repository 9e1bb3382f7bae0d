//! The wire protocol is `confab-protocol` (crates/confab-protocol); this
//! module re-exports it and turns its JSON text into the shared frames
//! (`ByteString`, a refcounted buffer every recipient shares) sessions write.

use bytestring::ByteString;

pub use confab_protocol::*;

/// The `error` frame for `err`, echoing `reference`.
pub fn error_frame(
    reference: Option<&Ref>,
    err: &ProtoError,
    room: Option<&RoomName>,
) -> ByteString {
    error_json(reference, err, room).into()
}

/// A reply as a frame.
pub fn reply_frame(reply: &Reply<'_>) -> ByteString {
    reply.to_json().into()
}
