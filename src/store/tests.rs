//! The batch planner and the page cuts, shared by both stores.
use super::*;

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
    }
}

#[test]
fn a_batch_is_decided_in_order_with_gap_free_seqs() {
    let batch = vec![
        req("g", "1", AppendOp::Create),
        req("g", "2", msg("early", None)),
        req("g", "2", AppendOp::Join),
        req("g", "2", msg("hi", Some("c1"))),
        req("g", "2", msg("hi again", Some("c1"))),
        req("g", "1", AppendOp::Create),
        req("g", "2", AppendOp::Leave),
        req("g", "2", AppendOp::Leave),
        req("h", "1", AppendOp::Join),
    ];
    let p = plan(&batch, Loaded::default(), "n", Utc::now());
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
    assert_eq!(p.last_seqs, vec![(room("g"), 4)]);
    let mut m = p.membership.clone();
    m.sort();
    assert_eq!(
        m,
        vec![
            (room("g"), user("1"), Some(1)),
            (room("g"), user("2"), None)
        ]
    );
}

#[test]
fn seqs_continue_from_the_loaded_last_seq() {
    let mut loaded = Loaded::default();
    loaded.rooms.insert(room("g"), 41);
    loaded.members.insert((room("g"), user("1")));
    let batch = vec![req("g", "1", AppendOp::Join), req("g", "1", msg("x", None))];
    let p = plan(&batch, loaded, "n", Utc::now());
    assert_eq!(p.outcomes[0], AppendOutcome::AlreadyMember { last_seq: 41 });
    assert_eq!(p.events[0].seq, 42);
}

#[test]
fn a_room_taken_by_another_node_cannot_be_created() {
    let mut loaded = Loaded::default();
    loaded.taken.insert(room("g"));
    let p = plan(&[req("g", "1", AppendOp::Create)], loaded, "n", Utc::now());
    assert_eq!(p.outcomes[0], AppendOutcome::Refused(Refusal::RoomExists));
    assert!(p.events.is_empty());
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
