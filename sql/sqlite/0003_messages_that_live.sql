-- The same as sql/0003_messages_that_live.sql in SQLite's dialect.

ALTER TABLE events ADD COLUMN target_seq INTEGER;
CREATE INDEX events_target_seq ON events (room, target_seq) WHERE target_seq IS NOT NULL;

CREATE TABLE message_state (
    room       TEXT NOT NULL REFERENCES rooms (name),
    seq        INTEGER NOT NULL,
    text       TEXT,
    edited     INTEGER NOT NULL DEFAULT 0,
    deleted_by TEXT,
    state_seq  INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
);

CREATE TABLE reactions (
    room    TEXT NOT NULL REFERENCES rooms (name),
    seq     INTEGER NOT NULL,
    emoji   TEXT NOT NULL,
    user_id TEXT NOT NULL,
    at_seq  INTEGER NOT NULL,
    PRIMARY KEY (room, seq, emoji, user_id)
);

CREATE TABLE mentions (
    room    TEXT NOT NULL REFERENCES rooms (name),
    seq     INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room, user_id, seq)
);

ALTER TABLE room_members ADD COLUMN read_seq INTEGER NOT NULL DEFAULT 0;
UPDATE room_members SET read_seq = (SELECT r.last_seq FROM rooms r WHERE r.name = room_members.room);

-- `rooms` counts unread messages over a user's memberships.
CREATE INDEX room_members_user ON room_members (user_id);
