-- Rooms with owners: roles, private rooms, invitations, bans, direct
-- messages and blocks (docs/protocol.md, "Rooms with owners").

-- Event kinds are an open set from now on: the code knows them, and a new
-- kind needs no migration of this table.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_type_check;
-- The user an event acts on (invite, kick, ban, role, a DM's create), and the
-- kind's other fields as a JSON object (role, reason, private, dm, by).
ALTER TABLE events ADD COLUMN target text, ADD COLUMN data text;

-- `owner` is NULL only for a room with no members; `dm_a` < `dm_b` are a
-- DM's two users.
ALTER TABLE rooms
    ADD COLUMN private boolean NOT NULL DEFAULT false,
    ADD COLUMN owner text,
    ADD COLUMN dm_a text,
    ADD COLUMN dm_b text;

ALTER TABLE room_members
    ADD COLUMN role text NOT NULL DEFAULT 'member'
        CHECK (role IN ('owner', 'admin', 'member'));

-- Rooms made before roles get their owner by the rule for an owner who
-- leaves: the member who joined first (there are no admins yet).
UPDATE room_members m SET role = 'owner'
FROM (SELECT room, min(joined_seq) AS first FROM room_members GROUP BY room) f
WHERE m.room = f.room AND m.joined_seq = f.first;
UPDATE rooms r SET owner = m.user_id
FROM room_members m WHERE m.room = r.name AND m.role = 'owner';

-- Open invitations; a join uses one up.
CREATE TABLE room_invites (
    room    text NOT NULL REFERENCES rooms (name),
    user_id text NOT NULL,
    by_user text NOT NULL,
    seq     bigint NOT NULL,
    PRIMARY KEY (room, user_id)
);

CREATE TABLE room_bans (
    room    text NOT NULL REFERENCES rooms (name),
    user_id text NOT NULL,
    by_user text NOT NULL,
    reason  text,
    seq     bigint NOT NULL,
    PRIMARY KEY (room, user_id)
);

-- `user_id` blocked `blocked`: the blocked user cannot dm or invite them.
CREATE TABLE user_blocks (
    user_id text NOT NULL,
    blocked text NOT NULL,
    at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, blocked)
);
