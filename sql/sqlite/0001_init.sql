-- Confab's event log and the state folded from it (SQLite, the embedded
-- default). The same tables as sql/0001_init.sql in SQLite's dialect.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('epoch', lower(hex(randomblob(16))));

CREATE TABLE rooms (
    name       TEXT PRIMARY KEY,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_seq   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    room          TEXT NOT NULL REFERENCES rooms (name),
    seq           INTEGER NOT NULL,
    type          TEXT NOT NULL CHECK (type IN ('create', 'join', 'leave', 'message')),
    user_id       TEXT NOT NULL,
    message       TEXT,
    client_msg_id TEXT,
    node          TEXT NOT NULL,
    at            TEXT NOT NULL,
    UNIQUE (room, seq)
);
CREATE UNIQUE INDEX events_client_msg_id
    ON events (room, user_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

CREATE TABLE room_members (
    room       TEXT NOT NULL REFERENCES rooms (name),
    user_id    TEXT NOT NULL,
    joined_seq INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
);
