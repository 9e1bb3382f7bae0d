-- The same as sql/0002_rooms_with_owners.sql in SQLite's dialect. SQLite
-- cannot drop a CHECK constraint, so the events table is rebuilt once,
-- without it: event kinds are an open set from now on.

CREATE TABLE events_v2 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    room          TEXT NOT NULL REFERENCES rooms (name),
    seq           INTEGER NOT NULL,
    type          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    message       TEXT,
    client_msg_id TEXT,
    node          TEXT NOT NULL,
    at            TEXT NOT NULL,
    target        TEXT,
    data          TEXT,
    UNIQUE (room, seq)
);
INSERT INTO events_v2 (id, room, seq, type, user_id, message, client_msg_id, node, at)
SELECT id, room, seq, type, user_id, message, client_msg_id, node, at FROM events;
DROP TABLE events;
ALTER TABLE events_v2 RENAME TO events;
CREATE UNIQUE INDEX events_client_msg_id
    ON events (room, user_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

ALTER TABLE rooms ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN owner TEXT;
ALTER TABLE rooms ADD COLUMN dm_a TEXT;
ALTER TABLE rooms ADD COLUMN dm_b TEXT;

ALTER TABLE room_members ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('owner', 'admin', 'member'));

UPDATE room_members SET role = 'owner'
WHERE joined_seq = (SELECT min(f.joined_seq) FROM room_members f WHERE f.room = room_members.room);
UPDATE rooms SET owner =
    (SELECT m.user_id FROM room_members m WHERE m.room = rooms.name AND m.role = 'owner');

CREATE TABLE room_invites (
    room    TEXT NOT NULL REFERENCES rooms (name),
    user_id TEXT NOT NULL,
    by_user TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
);

CREATE TABLE room_bans (
    room    TEXT NOT NULL REFERENCES rooms (name),
    user_id TEXT NOT NULL,
    by_user TEXT NOT NULL,
    reason  TEXT,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
);

CREATE TABLE user_blocks (
    user_id TEXT NOT NULL,
    blocked TEXT NOT NULL,
    at      TEXT NOT NULL,
    PRIMARY KEY (user_id, blocked)
);
