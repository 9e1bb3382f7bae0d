-- Messages that live: edits, deletes, reactions, mentions and read markers
-- (docs/protocol.md, "Messages that live").

-- The message an edit, delete, react or unreact acts on.
ALTER TABLE events ADD COLUMN target_seq bigint;
-- A delete finds the edits of its message through this.
CREATE INDEX events_target_seq ON events (room, target_seq) WHERE target_seq IS NOT NULL;

-- A message's current state, made the first time an edit, delete or
-- reaction needs it (a plain message has none). `text` is the current text
-- (NULL once deleted).
CREATE TABLE message_state (
    room       text NOT NULL REFERENCES rooms (name),
    seq        bigint NOT NULL,
    text       text,
    edited     integer NOT NULL DEFAULT 0,
    deleted_by text,
    state_seq  bigint NOT NULL,
    PRIMARY KEY (room, seq)
);

-- One reaction per (user, message, emoji), enforced here.
CREATE TABLE reactions (
    room    text NOT NULL REFERENCES rooms (name),
    seq     bigint NOT NULL,
    emoji   text NOT NULL,
    user_id text NOT NULL,
    at_seq  bigint NOT NULL,
    PRIMARY KEY (room, seq, emoji, user_id)
);

-- Who each message mentions (kept mentions only), for mentions_unread.
CREATE TABLE mentions (
    room    text NOT NULL REFERENCES rooms (name),
    seq     bigint NOT NULL,
    user_id text NOT NULL,
    PRIMARY KEY (room, user_id, seq)
);

-- A member's read marker. Members from before markers have read everything.
ALTER TABLE room_members ADD COLUMN read_seq bigint NOT NULL DEFAULT 0;
UPDATE room_members m SET read_seq = r.last_seq FROM rooms r WHERE r.name = m.room;

-- `rooms` counts unread messages over a user's memberships.
CREATE INDEX room_members_user ON room_members (user_id);
