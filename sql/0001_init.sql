-- Confab's event log and the state folded from it (PostgreSQL).
-- Applied once, in order, by the node at start-up or by `confab migrate`
-- (refinery; the list is in src/store/migrations.rs).

-- Facts about this store. `epoch` changes only when the store is a new one, so
-- a client can tell that its `since` no longer applies.
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO meta (key, value)
VALUES ('epoch', md5(random()::text || clock_timestamp()::text));

-- One row per room; `last_seq` is the seq of its latest event. Appends lock
-- these rows (in name order) to assign the next seqs.
CREATE TABLE rooms (
    name       text PRIMARY KEY,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    last_seq   bigint NOT NULL DEFAULT 0
);

-- The durable log, the source of truth.
CREATE TABLE events (
    id            bigserial PRIMARY KEY,
    room          text NOT NULL REFERENCES rooms (name),
    seq           bigint NOT NULL,
    type          text NOT NULL CHECK (type IN ('create', 'join', 'leave', 'message')),
    user_id       text NOT NULL,
    message       text,
    client_msg_id text,
    node          text NOT NULL,
    at            timestamptz NOT NULL,
    UNIQUE (room, seq)
);
CREATE UNIQUE INDEX events_client_msg_id
    ON events (room, user_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

-- Current membership, kept in the same transaction as the events.
CREATE TABLE room_members (
    room       text NOT NULL REFERENCES rooms (name),
    user_id    text NOT NULL,
    joined_seq bigint NOT NULL,
    PRIMARY KEY (room, user_id)
);
