//! The batch planner and the page cuts, shared by both stores.
use super::*;
use crate::protocol::{EventKind, Target};

fn room(s: &str) -> RoomName {
    RoomName::trusted(s.into())
}
fn user(s: &str) -> UserId {
    UserId::trusted(s.into())
}
fn req(r: &str, u: &str, op: AppendOp) -> AppendRequest {
    AppendRequest {
        room: room(r),
        user: user(u),
        op,
    }
}
fn msg(text: &str, c: Option<&str>) -> AppendOp {
    AppendOp::Message {
        text: text.into(),
        client_msg_id: c.map(Into::into),
        reply_to: None,
        mentions: Vec::new(),
    }
}

const CREATE: AppendOp = AppendOp::Create { private: false };

fn member(role: Role, joined_seq: Seq) -> Membership {
    Membership { role, joined_seq }
}

fn events(outcome: &AppendOutcome) -> Vec<(EventKind, Seq)> {
    match outcome {
        AppendOutcome::Appended(evs) => evs.iter().map(|e| (e.kind, e.seq)).collect(),
        other => panic!("not appended: {other:?}"),
    }
}

#[test]
fn a_batch_is_decided_in_order_with_gap_free_seqs() {
    let batch = vec![
        req("g", "1", CREATE),
        req("g", "2", msg("early", None)),
        req("g", "2", AppendOp::Join),
        req("g", "2", msg("hi", Some("c1"))),
        req("g", "2", msg("hi again", Some("c1"))),
        req("g", "1", CREATE),
        req("g", "2", AppendOp::Leave),
        req("g", "2", AppendOp::Leave),
        req("h", "1", AppendOp::Join),
    ];
    let p = plan(&batch, Loaded::default(), "n", chrono::Utc::now());
    let seqs: Vec<Seq> = p.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(matches!(
        p.outcomes[1],
        AppendOutcome::Refused(Refusal::NotAMember)
    ));
    assert!(matches!(&p.outcomes[4], AppendOutcome::Duplicate(e) if e.seq == 3));
    assert!(matches!(
        p.outcomes[5],
        AppendOutcome::Refused(Refusal::RoomExists)
    ));
    assert!(matches!(
        p.outcomes[7],
        AppendOutcome::Refused(Refusal::NotAMember)
    ));
    assert!(matches!(
        p.outcomes[8],
        AppendOutcome::Refused(Refusal::NoSuchRoom)
    ));
    assert_eq!(p.rooms, vec![(room("g"), 4, Some(user("1")))]);
    let mut m = p.membership.clone();
    m.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        m,
        vec![
            ((room("g"), user("1")), Some(member(Role::Owner, 1))),
            ((room("g"), user("2")), None)
        ]
    );
}

#[test]
fn seqs_continue_from_the_loaded_last_seq() {
    let mut loaded = Loaded::default();
    loaded.rooms.insert(
        room("g"),
        RoomRow {
            last_seq: 41,
            ..RoomRow::default()
        },
    );
    loaded
        .members
        .insert((room("g"), user("1")), member(Role::Member, 3));
    let batch = vec![req("g", "1", AppendOp::Join), req("g", "1", msg("x", None))];
    let p = plan(&batch, loaded, "n", chrono::Utc::now());
    assert_eq!(p.outcomes[0], AppendOutcome::AlreadyMember { last_seq: 41 });
    assert_eq!(p.events[0].seq, 42);
}

#[test]
fn a_room_taken_by_another_node_cannot_be_created() {
    let mut loaded = Loaded::default();
    loaded.taken.insert(room("g"));
    let p = plan(&[req("g", "1", CREATE)], loaded, "n", chrono::Utc::now());
    assert_eq!(p.outcomes[0], AppendOutcome::Refused(Refusal::RoomExists));
    assert!(p.events.is_empty());
}

/// A loaded room `g` owned by `o` (joined at 1), with members.
fn owned(private: bool, others: &[(&str, Role, Seq)]) -> Loaded {
    let mut loaded = Loaded::default();
    loaded.rooms.insert(
        room("g"),
        RoomRow {
            last_seq: 10,
            private,
            owner: Some(user("o")),
            dm: None,
        },
    );
    loaded
        .members
        .insert((room("g"), user("o")), member(Role::Owner, 1));
    for (u, role, seq) in others {
        loaded
            .members
            .insert((room("g"), user(u)), member(*role, *seq));
    }
    loaded
}

#[test]
fn an_owner_who_leaves_passes_the_room_to_the_first_admin_else_the_first_member() {
    let loaded = owned(false, &[("m", Role::Member, 2), ("a", Role::Admin, 5)]);
    let p = plan(
        &[req("g", "o", AppendOp::Leave)],
        loaded,
        "n",
        chrono::Utc::now(),
    );
    assert_eq!(
        events(&p.outcomes[0]),
        vec![(EventKind::Leave, 11), (EventKind::Role, 12)]
    );
    assert_eq!(p.events[1].target, Some(Target::User(user("a"))));
    assert_eq!(p.rooms, vec![(room("g"), 12, Some(user("a")))]);

    // Heirs outside the batch's pairs come from `successors`.
    let mut loaded = owned(false, &[]);
    loaded.successors.insert(
        room("g"),
        vec![
            (user("x"), member(Role::Member, 4)),
            (user("y"), member(Role::Member, 3)),
        ],
    );
    let p = plan(
        &[req("g", "o", AppendOp::Leave)],
        loaded,
        "n",
        chrono::Utc::now(),
    );
    assert_eq!(p.events[1].target, Some(Target::User(user("y"))));

    // The last member's leave leaves no owner; the next joiner owns the room.
    let batch = [
        req("g", "o", AppendOp::Leave),
        req("g", "z", AppendOp::Join),
    ];
    let p = plan(&batch, owned(false, &[]), "n", chrono::Utc::now());
    assert_eq!(p.events.len(), 2);
    assert_eq!(p.rooms, vec![(room("g"), 12, Some(user("z")))]);
}

#[test]
fn moderation_follows_the_roles() {
    let kick = |t: &str| AppendOp::Kick { target: user(t) };
    let loaded = || {
        owned(
            false,
            &[
                ("a", Role::Admin, 2),
                ("b", Role::Admin, 3),
                ("m", Role::Member, 4),
            ],
        )
    };
    let refused = |u: &str, op: AppendOp| {
        plan(&[req("g", u, op)], loaded(), "n", chrono::Utc::now()).outcomes[0].clone()
    };
    assert_eq!(
        refused("m", kick("a")),
        AppendOutcome::Refused(Refusal::Forbidden)
    );
    assert_eq!(
        refused("a", kick("b")),
        AppendOutcome::Refused(Refusal::Forbidden)
    );
    assert_eq!(
        refused("a", kick("o")),
        AppendOutcome::Refused(Refusal::Forbidden)
    );
    assert_eq!(
        refused("o", kick("o")),
        AppendOutcome::Refused(Refusal::Forbidden)
    );
    assert_eq!(
        refused("o", kick("nobody")),
        AppendOutcome::Refused(Refusal::NoSuchMember)
    );
    assert_eq!(
        refused("stranger", kick("m")),
        AppendOutcome::Refused(Refusal::NotAMember)
    );
    assert_eq!(
        events(&refused("a", kick("m"))),
        vec![(EventKind::Kick, 11)]
    );
    let demote = AppendOp::SetRole {
        target: user("o"),
        role: Role::Member,
    };
    assert_eq!(
        refused("a", demote.clone()),
        AppendOutcome::Refused(Refusal::Forbidden)
    );
    assert_eq!(
        refused("o", demote),
        AppendOutcome::Refused(Refusal::Forbidden)
    );
    let same = AppendOp::SetRole {
        target: user("a"),
        role: Role::Admin,
    };
    assert_eq!(
        refused("o", same),
        AppendOutcome::Unchanged { last_seq: 10 }
    );

    // Passing ownership makes the old owner an admin.
    let give = AppendOp::SetRole {
        target: user("m"),
        role: Role::Owner,
    };
    let p = plan(&[req("g", "o", give)], loaded(), "n", chrono::Utc::now());
    let mut m = p.membership.clone();
    m.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        m.iter()
            .map(|((_, u), m)| (u.as_str(), m.map(|m| m.role)))
            .collect::<Vec<_>>(),
        vec![("m", Some(Role::Owner)), ("o", Some(Role::Admin))]
    );
}

#[test]
fn a_private_room_is_no_such_room_to_an_outsider_and_a_ban_keeps_a_user_out() {
    let mut loaded = owned(true, &[("m", Role::Member, 2)]);
    loaded.invites.insert(
        (room("g"), user("i")),
        Invitation {
            by: user("o"),
            seq: 9,
        },
    );
    let batch = [
        req("g", "x", AppendOp::Join),
        req("g", "x", msg("hi", None)),
        req("g", "m", AppendOp::Invite { target: user("y") }),
        req("g", "i", msg("hi", None)),
        req("g", "i", AppendOp::Join),
        req(
            "g",
            "o",
            AppendOp::Ban {
                target: user("i"),
                reason: Some("spam".into()),
            },
        ),
        req("g", "i", AppendOp::Join),
    ];
    let p = plan(&batch, loaded, "n", chrono::Utc::now());
    let o = &p.outcomes;
    assert_eq!(o[0], AppendOutcome::Refused(Refusal::NoSuchRoom));
    assert_eq!(o[1], AppendOutcome::Refused(Refusal::NoSuchRoom));
    assert_eq!(o[2], AppendOutcome::Refused(Refusal::Forbidden));
    assert_eq!(o[3], AppendOutcome::Refused(Refusal::NotAMember));
    assert_eq!(events(&o[4]), vec![(EventKind::Join, 11)]);
    assert_eq!(events(&o[5]), vec![(EventKind::Ban, 12)]);
    // The join used the invitation up and the ban ended the membership:
    // an outsider again.
    assert_eq!(o[6], AppendOutcome::Refused(Refusal::NoSuchRoom));
    assert_eq!(p.invites, vec![((room("g"), user("i")), None)]);
}

#[test]
fn a_dm_is_made_once_and_a_block_stops_it() {
    let dm = room("dm:x");
    let op = || AppendOp::Dm { other: user("b") };
    let batch = [
        AppendRequest {
            room: dm.clone(),
            user: user("a"),
            op: op(),
        },
        AppendRequest {
            room: dm.clone(),
            user: user("a"),
            op: op(),
        },
        AppendRequest {
            room: dm.clone(),
            user: user("c"),
            op: AppendOp::Join,
        },
        AppendRequest {
            room: dm.clone(),
            user: user("a"),
            op: AppendOp::Invite { target: user("c") },
        },
    ];
    let p = plan(&batch, Loaded::default(), "n", chrono::Utc::now());
    assert_eq!(
        events(&p.outcomes[0]),
        vec![(EventKind::Create, 1), (EventKind::Join, 2)]
    );
    assert!(p.events[0].dm && p.events[0].private);
    assert_eq!(p.events[1].by, Some(user("a")));
    assert_eq!(p.outcomes[1], AppendOutcome::AlreadyMember { last_seq: 2 });
    assert_eq!(p.outcomes[2], AppendOutcome::Refused(Refusal::NoSuchRoom));
    assert_eq!(p.outcomes[3], AppendOutcome::Refused(Refusal::Forbidden));

    let mut loaded = Loaded::default();
    loaded.blocks.insert((user("b"), user("a")));
    let p = plan(&batch[..1], loaded, "n", chrono::Utc::now());
    assert_eq!(p.outcomes[0], AppendOutcome::Refused(Refusal::Forbidden));
    assert!(p.created.is_empty());
}

#[test]
fn only_statement_failures_may_be_one_requests_fault() {
    // NUL in text (22021), a CHECK (23514), a unique index (23505), a
    // trigger's RAISE (P0001), an index row too large (54000), a deadlock (40P01).
    for code in ["22021", "23514", "23505", "P0001", "54000", "40P01"] {
        assert!(statement_sqlstate(code), "{code}");
    }
    // Connection lost, shutdown, too many connections, disk full, I/O, internal.
    for code in [
        "08006", "57P01", "57P03", "53300", "53100", "58030", "XX000", "3D000",
    ] {
        assert!(!statement_sqlstate(code), "{code}");
    }
    let sqlite = |code| {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    };
    assert!(sqlite(rusqlite::ffi::SQLITE_CONSTRAINT).may_be_one_request());
    assert!(!sqlite(rusqlite::ffi::SQLITE_BUSY).may_be_one_request());
    assert!(!sqlite(rusqlite::ffi::SQLITE_IOERR).may_be_one_request());
    assert!(!sqlite(rusqlite::ffi::SQLITE_FULL).may_be_one_request());
    let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
    assert!(!StoreError::Pool(timeout).may_be_one_request());
    assert!(!StoreError::Other(anyhow::anyhow!("task failed")).may_be_one_request());
}

#[test]
fn page_queries_cut_as_the_protocol_says() {
    let q = PageQuery::of(HistoryRange {
        since: Some(3),
        before: None,
        limit: 2,
    });
    assert_eq!((q.lower, q.descending, q.fetch), (3, false, 3));
    let q = PageQuery::of(HistoryRange {
        since: None,
        before: Some(9),
        limit: 2,
    });
    assert_eq!((q.upper, q.descending), (9, true));
}

/// A room `g` with owner `o`, member `m` (joined at 2), admin `a` (at 3),
/// and `o`'s message at seq 5.
fn with_message() -> Loaded {
    let mut loaded = owned(false, &[("m", Role::Member, 2), ("a", Role::Admin, 3)]);
    loaded.messages.insert(
        (room("g"), 5),
        MessageRow {
            author: user("o"),
            state: None,
        },
    );
    loaded
}

fn edit(seq: Seq, text: &str, c: Option<&str>) -> AppendOp {
    AppendOp::Edit {
        target: seq,
        text: text.into(),
        client_msg_id: c.map(Into::into),
    }
}

fn react(seq: Seq, emoji: &str, on: bool) -> AppendOp {
    AppendOp::React {
        target: seq,
        emoji: emoji.into(),
        on,
        client_msg_id: None,
    }
}

#[test]
fn edits_deletes_and_reactions_fold_into_the_message_state() {
    let batch = [
        req("g", "m", edit(5, "mine now", None)),
        req("g", "o", edit(5, "fixed", Some("e1"))),
        req("g", "o", edit(5, "fixed again", Some("e1"))),
        req("g", "m", react(5, "👍", true)),
        req("g", "m", react(5, "👍", true)),
        req("g", "a", react(5, "👍", false)),
        req("g", "o", edit(9, "nothing there", None)),
        req(
            "g",
            "m",
            AppendOp::Delete {
                target: 5,
                client_msg_id: None,
            },
        ),
        req(
            "g",
            "a",
            AppendOp::Delete {
                target: 5,
                client_msg_id: None,
            },
        ),
        req("g", "o", edit(5, "too late", None)),
        req("g", "m", react(5, "🎉", true)),
    ];
    let p = plan(&batch, with_message(), "n", chrono::Utc::now());
    let o = &p.outcomes;
    assert_eq!(o[0], AppendOutcome::Refused(Refusal::NotAuthor));
    assert_eq!(events(&o[1]), vec![(EventKind::Edit, 11)]);
    assert!(matches!(&o[2], AppendOutcome::Duplicate(e) if e.seq == 11));
    assert_eq!(events(&o[3]), vec![(EventKind::React, 12)]);
    assert_eq!(o[4], AppendOutcome::Repeated { last_seq: 12 });
    assert_eq!(o[5], AppendOutcome::Refused(Refusal::NoSuchReaction));
    assert_eq!(o[6], AppendOutcome::Refused(Refusal::NoSuchEvent));
    assert_eq!(o[7], AppendOutcome::Refused(Refusal::Forbidden));
    assert_eq!(events(&o[8]), vec![(EventKind::Delete, 13)]);
    assert_eq!(o[9], AppendOutcome::Refused(Refusal::NoSuchEvent));
    assert_eq!(o[10], AppendOutcome::Refused(Refusal::NoSuchEvent));
    assert_eq!(p.events[0].target, Some(Target::Seq(5)));
    assert_eq!(
        p.states,
        vec![(
            (room("g"), 5),
            StateRow {
                text: None,
                edited: 1,
                deleted_by: Some(user("a")),
                state_seq: 13,
            }
        )]
    );
    assert_eq!(p.redact, vec![(room("g"), 5)]);
    assert_eq!(
        p.reactions,
        vec![((room("g"), 5, "👍".to_string(), user("m")), Some(12))]
    );
}

#[test]
fn a_message_keeps_only_the_mentions_of_members_and_moves_its_posters_marker() {
    let send = AppendOp::Message {
        text: "hi".into(),
        client_msg_id: None,
        reply_to: Some(5),
        mentions: vec![user("m"), user("stranger"), user("a")],
    };
    let lost = AppendOp::Message {
        text: "hi".into(),
        client_msg_id: None,
        reply_to: Some(4),
        mentions: Vec::new(),
    };
    let batch = [req("g", "o", send), req("g", "o", lost)];
    let p = plan(&batch, with_message(), "n", chrono::Utc::now());
    assert_eq!(p.events[0].mentions, vec![user("m"), user("a")]);
    assert_eq!(p.events[0].reply_to, Some(5));
    assert_eq!(
        p.mentions,
        vec![(room("g"), 11, user("m")), (room("g"), 11, user("a"))]
    );
    assert_eq!(p.reads, vec![(room("g"), user("o"), 11)]);
    assert_eq!(p.outcomes[1], AppendOutcome::Refused(Refusal::NoSuchEvent));
}

#[test]
fn two_messages_of_one_poster_move_its_marker_once_to_the_last() {
    let batch = [
        req("g", "o", msg("one", None)),
        req("g", "m", msg("two", None)),
        req("g", "o", msg("three", None)),
    ];
    let p = plan(&batch, with_message(), "n", chrono::Utc::now());
    let mut reads = p.reads.clone();
    reads.sort();
    assert_eq!(
        reads,
        vec![(room("g"), user("m"), 12), (room("g"), user("o"), 13)]
    );
}
