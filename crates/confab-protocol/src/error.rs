//! The protocol's error codes and the error a command fails with.

use serde::{Deserialize, Serialize};

use crate::RoomName;

/// The protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    InvalidField,
    InvalidRoom,
    MessageTooLong,
    RoomExists,
    NoSuchRoom,
    NotAMember,
    UserMismatch,
    TooManyRooms,
    RateLimited,
    Unavailable,
    UnsupportedFrame,
    Internal,
    /// Token mode: the handshake or REST request carries no token.
    TokenMissing,
    /// Token mode: the token's `exp` (plus the leeway) is past.
    TokenExpired,
    /// Token mode: the token is malformed, badly signed, or its claims do not check out.
    TokenInvalid,
    /// `ALLOWED_ORIGINS`: the handshake's `Origin` is not listed.
    OriginNotAllowed,
    /// The caller's role may not do this here (or a DM, or a block).
    Forbidden,
    /// Banned from this public room (or, for `invite`, the invitee is).
    Banned,
    /// The user acted on is not a member.
    NoSuchMember,
    /// `invite` of a member.
    AlreadyMember,
    /// `uninvite` of a user with no invitation.
    NotInvited,
    /// `unban` of a user who is not banned.
    NotBanned,
    /// The seq is not a message of this room (or the message is deleted).
    NoSuchEvent,
    /// `edit` of another user's message.
    NotAuthor,
    /// `unreact` of a reaction the user has not made.
    NoSuchReaction,
}

impl ErrorCode {
    /// Every code, in declaration order. A test checks it against the
    /// enum's variants (read from its derived `Deserialize`), so a new code
    /// that is not added here fails it.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::InvalidField,
        ErrorCode::InvalidRoom,
        ErrorCode::MessageTooLong,
        ErrorCode::RoomExists,
        ErrorCode::NoSuchRoom,
        ErrorCode::NotAMember,
        ErrorCode::UserMismatch,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::UnsupportedFrame,
        ErrorCode::Internal,
        ErrorCode::TokenMissing,
        ErrorCode::TokenExpired,
        ErrorCode::TokenInvalid,
        ErrorCode::OriginNotAllowed,
        ErrorCode::Forbidden,
        ErrorCode::Banned,
        ErrorCode::NoSuchMember,
        ErrorCode::AlreadyMember,
        ErrorCode::NotInvited,
        ErrorCode::NotBanned,
        ErrorCode::NoSuchEvent,
        ErrorCode::NotAuthor,
        ErrorCode::NoSuchReaction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::NoSuchRoom => "no_such_room",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::UserMismatch => "user_mismatch",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::Internal => "internal",
            ErrorCode::TokenMissing => "token_missing",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Banned => "banned",
            ErrorCode::NoSuchMember => "no_such_member",
            ErrorCode::AlreadyMember => "already_member",
            ErrorCode::NotInvited => "not_invited",
            ErrorCode::NotBanned => "not_banned",
            ErrorCode::NoSuchEvent => "no_such_event",
            ErrorCode::NotAuthor => "not_author",
            ErrorCode::NoSuchReaction => "no_such_reaction",
        }
    }

    /// The HTTP status the REST API answers this error with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NoSuchRoom
            | ErrorCode::NoSuchMember
            | ErrorCode::NotInvited
            | ErrorCode::NotBanned
            | ErrorCode::NoSuchEvent
            | ErrorCode::NoSuchReaction => 404,
            ErrorCode::NotAMember
            | ErrorCode::UserMismatch
            | ErrorCode::OriginNotAllowed
            | ErrorCode::Forbidden
            | ErrorCode::Banned
            | ErrorCode::NotAuthor => 403,
            ErrorCode::TokenMissing | ErrorCode::TokenExpired | ErrorCode::TokenInvalid => 401,
            ErrorCode::RoomExists | ErrorCode::AlreadyMember => 409,
            ErrorCode::RateLimited | ErrorCode::TooManyRooms => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

/// A command's failure in the protocol's terms: a code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_field(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorCode::InvalidField, message)
    }

    pub fn unavailable() -> ProtoError {
        ProtoError::new(
            ErrorCode::Unavailable,
            "the event store cannot take this command now; nothing was stored, retry later",
        )
    }

    pub fn internal() -> ProtoError {
        ProtoError::new(ErrorCode::Internal, "internal error; it has been logged")
    }

    pub fn no_such_room(room: &RoomName) -> ProtoError {
        ProtoError::new(ErrorCode::NoSuchRoom, format!("room {room} does not exist"))
    }

    pub fn not_a_member(room: &RoomName) -> ProtoError {
        ProtoError::new(
            ErrorCode::NotAMember,
            format!("you are not a member of room {room}"),
        )
    }

    pub fn room_exists(room: &RoomName) -> ProtoError {
        ProtoError::new(ErrorCode::RoomExists, format!("room {room} already exists"))
    }
}
