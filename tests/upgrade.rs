//! Today's database, created by the current migrations and filled, upgrades
//! and keeps everything: a store as the previous release left it (schema
//! version 1, rows written the way its code wrote them) is migrated by a new
//! node, which serves the same rooms, history and members, gives every old
//! room its owner by the rule of docs/protocol.md ("Rooms created before
//! roles existed got their owner ... the member who joined first"), and lets
//! the new commands work in old rooms, across a restart.

mod common;

use std::collections::HashMap;

use common::{Backend, Client, StoreEnv, TestNode};
use confab::store::migrations::{runner_up_to, Dialect};
use serde_json::{json, Value};

on_both_stores!(an_old_database_upgrades_and_keeps_everything);

/// One event as the old code wrote it.
struct Old {
    room: &'static str,
    kind: &'static str,
    user: &'static str,
    message: Option<&'static str>,
    client_msg_id: Option<&'static str>,
}

const fn ev(room: &'static str, kind: &'static str, user: &'static str) -> Old {
    Old {
        room,
        kind,
        user,
        message: None,
        client_msg_id: None,
    }
}

const fn msg(room: &'static str, user: &'static str, text: &'static str) -> Old {
    Old {
        room,
        kind: "message",
        user,
        message: Some(text),
        client_msg_id: None,
    }
}

/// The old log, in commit order across rooms.
///
/// - `alpha`: its creator ann is still a member; cat left and came back
///   (joined_seq 7), so ann (1) then bob (2) joined first: owner ann.
/// - `beta`: its creator dan left; eve joined before fay but left and came
///   back (joined_seq 7), so fay (3) is the member who joined first: owner fay.
/// - `gamma`: everyone left; no owner, the next joiner owns it.
fn old_log() -> Vec<Old> {
    vec![
        ev("alpha", "create", "ann"),
        ev("alpha", "join", "bob"),
        ev("beta", "create", "dan"),
        msg("alpha", "ann", "hello, it's ünïcode ✓ and \"quotes\""),
        ev("beta", "join", "eve"),
        ev("gamma", "create", "gil"),
        ev("beta", "join", "fay"),
        ev("alpha", "join", "cat"),
        ev("gamma", "join", "hal"),
        Old {
            client_msg_id: Some("c-1"),
            ..msg("alpha", "bob", "sent once")
        },
        msg("beta", "dan", "bye"),
        ev("alpha", "leave", "cat"),
        msg("gamma", "hal", "anyone?"),
        ev("beta", "leave", "dan"),
        ev("gamma", "leave", "hal"),
        ev("beta", "leave", "eve"),
        ev("alpha", "join", "cat"),
        ev("gamma", "leave", "gil"),
        ev("beta", "join", "eve"),
        msg("alpha", "cat", "back"),
        msg("beta", "eve", "still here"),
    ]
}

const OLD_NODE: &str = "node-old";

/// The `k`-th commit time, RFC 3339 with microseconds and `Z`.
fn at(k: usize) -> String {
    format!("2026-01-02T03:05:{:02}.{:06}Z", k, 100_000 + k * 1234)
}

fn sql_text(s: Option<&str>) -> String {
    match s {
        Some(s) => format!("'{}'", s.replace('\'', "''")),
        None => "NULL".to_string(),
    }
}

/// The old log with its seqs and times, and the rooms and members folded
/// from it as the old code kept them.
struct Fixture {
    /// (room, seq, commit index, event)
    events: Vec<(String, i64, usize, Old)>,
    /// room → (creator, created_at, last_seq)
    rooms: Vec<(String, String, String, i64)>,
    /// (room, user, joined_seq)
    members: Vec<(String, String, i64)>,
}

fn fixture() -> Fixture {
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut rooms = Vec::new();
    let mut members: Vec<(String, String, i64)> = Vec::new();
    let mut events = Vec::new();
    for (k, e) in old_log().into_iter().enumerate() {
        let seq = {
            let s = last.entry(e.room).or_insert(0);
            *s += 1;
            *s
        };
        match e.kind {
            "create" => {
                rooms.push((e.room.to_string(), e.user.to_string(), at(k), 0));
                members.push((e.room.to_string(), e.user.to_string(), seq));
            }
            "join" => members.push((e.room.to_string(), e.user.to_string(), seq)),
            "leave" => members.retain(|(r, u, _)| !(r == e.room && u == e.user)),
            _ => {}
        }
        events.push((e.room.to_string(), seq, k, e));
    }
    for r in &mut rooms {
        r.3 = last[r.0.as_str()];
    }
    // Not in joined order, so that an upgrade that took the first row would
    // pick the wrong owner.
    members.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Fixture {
        events,
        rooms,
        members,
    }
}

/// Plain SQL, the same in both dialects, writing the fixture as the old
/// code did: rooms, then events (ids from the database), then members.
fn fill_sql(f: &Fixture) -> String {
    let mut sql = String::from("BEGIN;\n");
    for (name, by, created, last) in &f.rooms {
        sql += &format!(
            "INSERT INTO rooms (name, created_by, created_at, last_seq) \
             VALUES ('{name}', '{by}', '{created}', {last});\n"
        );
    }
    for (room, seq, k, e) in &f.events {
        sql += &format!(
            "INSERT INTO events (room, seq, type, user_id, message, client_msg_id, node, at) \
             VALUES ('{room}', {seq}, '{}', '{}', {}, {}, '{OLD_NODE}', '{}');\n",
            e.kind,
            e.user,
            sql_text(e.message),
            sql_text(e.client_msg_id),
            at(*k)
        );
    }
    for (room, user, joined) in &f.members {
        sql += &format!(
            "INSERT INTO room_members (room, user_id, joined_seq) VALUES ('{room}', '{user}', {joined});\n"
        );
    }
    sql + "COMMIT;\n"
}

/// A connection of the test's own to the node's store.
enum Db {
    Lite(rusqlite::Connection),
    Pg(tokio_postgres::Client),
}

impl Db {
    async fn open(store: &StoreEnv) -> Db {
        let var = |k: &str| {
            store
                .vars
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        if let Some(path) = var("SQLITE_PATH") {
            Db::Lite(rusqlite::Connection::open(path).expect("open sqlite"))
        } else {
            let url = var("DATABASE_URL").expect("SQLITE_PATH or DATABASE_URL");
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to postgres");
            tokio::spawn(conn);
            Db::Pg(client)
        }
    }

    /// The schema as the previous release left it: migrations up to 1.
    async fn migrate_to_v1(&mut self) {
        match self {
            Db::Lite(c) => {
                let report = runner_up_to(Dialect::Sqlite, 1)
                    .expect("runner")
                    .run(c)
                    .expect("migrate sqlite to version 1");
                assert_eq!(report.applied_migrations().len(), 1);
            }
            Db::Pg(c) => {
                let report = runner_up_to(Dialect::Postgres, 1)
                    .expect("runner")
                    .run_async(c)
                    .await
                    .expect("migrate postgres to version 1");
                assert_eq!(report.applied_migrations().len(), 1);
            }
        }
    }

    async fn batch(&mut self, sql: &str) {
        match self {
            Db::Lite(c) => c.execute_batch(sql).expect("sqlite batch"),
            Db::Pg(c) => c.batch_execute(sql).await.expect("postgres batch"),
        }
    }

    async fn int(&mut self, sql: &str) -> i64 {
        match self {
            Db::Lite(c) => c.query_row(sql, [], |r| r.get(0)).expect(sql),
            Db::Pg(c) => {
                let row = c.query_one(sql, &[]).await.expect(sql);
                // count(*) and max(version): bigint or integer.
                row.try_get::<_, i64>(0)
                    .or_else(|_| row.try_get::<_, i32>(0).map(i64::from))
                    .expect(sql)
            }
        }
    }

    async fn text(&mut self, sql: &str) -> String {
        match self {
            Db::Lite(c) => c.query_row(sql, [], |r| r.get(0)).expect(sql),
            Db::Pg(c) => c.query_one(sql, &[]).await.expect(sql).get(0),
        }
    }

    /// (room, seq) → id of every event.
    async fn ids(&mut self) -> HashMap<(String, i64), i64> {
        const Q: &str = "SELECT room, seq, id FROM events";
        match self {
            Db::Lite(c) => {
                let mut st = c.prepare(Q).expect(Q);
                st.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
                    .expect(Q)
                    .map(|r| r.expect("row"))
                    .collect()
            }
            Db::Pg(c) => c
                .query(Q, &[])
                .await
                .expect(Q)
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect(),
        }
    }
}

/// The events of `room` as every reply shows them: v1 fields only.
fn expected_events(f: &Fixture, ids: &HashMap<(String, i64), i64>, room: &str) -> Vec<Value> {
    f.events
        .iter()
        .filter(|(r, ..)| r == room)
        .map(|(r, seq, k, e)| {
            let mut v = json!({
                "type": e.kind,
                "room": r,
                "seq": seq,
                "id": ids[&(r.clone(), *seq)],
                "user_id": e.user,
                "node": OLD_NODE,
                "at": at(*k),
            });
            if let Some(m) = e.message {
                v["message"] = json!(m);
            }
            if let Some(c) = e.client_msg_id {
                v["client_msg_id"] = json!(c);
            }
            v
        })
        .collect()
}

async fn client_as(node: &TestNode, user: Option<&str>) -> Client {
    let mut c = node.client().await;
    if let Some(u) = user {
        let r = c.reply(json!({"type":"ping","user_id":u})).await;
        assert_eq!(r["type"], "pong", "{r}");
    }
    c
}

/// `members` of `room` as sorted (user, role) pairs.
async fn roles(c: &mut Client, room: &str) -> Vec<(String, String)> {
    let r = c.reply(json!({"type":"members","room":room})).await;
    assert_eq!(r["type"], "members", "{r}");
    let mut out: Vec<(String, String)> = r["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members reply: {r}"))
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap_or("?").to_string(),
                m["role"].as_str().unwrap_or("<no role>").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The whole log of `room`, asked by `c` (a member).
async fn history(c: &mut Client, room: &str) -> Vec<Value> {
    let h = c
        .reply(json!({"type":"history","room":room,"since":0,"limit":1000}))
        .await;
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["more"], false, "{h}");
    h["events"].as_array().expect("events").clone()
}

/// `rooms` as (name, members, last_seq, private, dm, role) tuples.
async fn rooms(c: &mut Client) -> Vec<(String, i64, i64, Value, Value, Value)> {
    let r = c.reply(json!({"type":"rooms"})).await;
    assert_eq!(r["type"], "rooms", "{r}");
    r["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("rooms reply: {r}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["members"].as_i64().expect("members"),
                e["last_seq"].as_i64().expect("last_seq"),
                e["private"].clone(),
                e["dm"].clone(),
                e["role"].clone(),
            )
        })
        .collect()
}

fn room_row(
    name: &str,
    members: i64,
    last_seq: i64,
    role: Option<&str>,
) -> (String, i64, i64, Value, Value, Value) {
    (
        name.to_string(),
        members,
        last_seq,
        json!(false),
        json!(false),
        role.map_or(Value::Null, |r| json!(r)),
    )
}

async fn an_old_database_upgrades_and_keeps_everything(b: Backend) {
    let store = StoreEnv::new(b).await;
    let f = fixture();

    // The database as the previous release left it.
    let mut db = Db::open(&store).await;
    db.migrate_to_v1().await;
    db.batch(&fill_sql(&f)).await;
    let ids = db.ids().await;
    let epoch = db.text("SELECT value FROM meta WHERE key = 'epoch'").await;
    assert_eq!(
        db.int("SELECT count(*) FROM refinery_schema_history").await,
        1
    );
    drop(db);

    let mut node = TestNode::spawn(store.clone(), vec![]).await;
    let mut db = Db::open(&store).await;
    assert_eq!(
        db.int("SELECT count(*) FROM refinery_schema_history").await,
        3,
        "the new migrations are recorded"
    );
    assert_eq!(
        db.int("SELECT max(version) FROM refinery_schema_history")
            .await,
        3
    );
    drop(db);

    let mut anon = client_as(&node, None).await;
    assert_eq!(
        anon.hello["epoch"],
        json!(epoch),
        "the same store: clients' `since` still applies"
    );
    // Every room with its last seq and member count.
    assert_eq!(
        rooms(&mut anon).await,
        vec![
            room_row("alpha", 3, 8, None),
            room_row("beta", 2, 8, None),
            room_row("gamma", 0, 5, None),
        ]
    );
    let mut ann = client_as(&node, Some("ann")).await;
    let mut bob = client_as(&node, Some("bob")).await;
    let mut eve = client_as(&node, Some("eve")).await;
    let mut fay = client_as(&node, Some("fay")).await;
    assert_eq!(
        rooms(&mut ann).await,
        vec![
            room_row("alpha", 3, 8, Some("owner")),
            room_row("beta", 2, 8, None),
            room_row("gamma", 0, 5, None),
        ]
    );
    assert_eq!(
        rooms(&mut fay).await,
        vec![
            room_row("alpha", 3, 8, None),
            room_row("beta", 2, 8, Some("owner")),
            room_row("gamma", 0, 5, None),
        ]
    );
    assert_eq!(
        rooms(&mut eve).await[1],
        room_row("beta", 2, 8, Some("member"))
    );

    // The old events, unchanged.
    assert_eq!(
        history(&mut ann, "alpha").await,
        expected_events(&f, &ids, "alpha")
    );
    assert_eq!(
        history(&mut fay, "beta").await,
        expected_events(&f, &ids, "beta")
    );
    // The REST API serves the same old events.
    let (status, body) = node
        .http("GET", "/rooms/alpha/events?since=0&limit=1000", None)
        .await;
    assert_eq!(status, 200, "{body}");
    let rest: Value = serde_json::from_str(&body).expect("a history page");
    assert_eq!(
        rest["events"],
        json!(expected_events(&f, &ids, "alpha")),
        "{body}"
    );
    let page = ann
        .reply(json!({"type":"history","room":"alpha","before":5,"limit":2}))
        .await;
    assert_eq!(
        page["events"],
        json!(expected_events(&f, &ids, "alpha")[2..4]),
        "{page}"
    );
    assert_eq!(page["more"], true, "{page}");

    // Owners by the rule: the member who joined first.
    assert_eq!(
        roles(&mut anon, "alpha").await,
        pairs(&[("ann", "owner"), ("bob", "member"), ("cat", "member")])
    );
    assert_eq!(
        roles(&mut anon, "beta").await,
        pairs(&[("eve", "member"), ("fay", "owner")])
    );
    assert_eq!(roles(&mut anon, "gamma").await, vec![]);

    // A new message continues the seq; an old client_msg_id is still known.
    let m = ann
        .ok(json!({"type":"message","room":"alpha","message":"after the upgrade"}))
        .await;
    assert_eq!(m["seq"], 9, "{m}");
    let dup = bob
        .ok(json!({"type":"message","room":"alpha","message":"sent once","client_msg_id":"c-1"}))
        .await;
    assert_eq!(dup["duplicate"], true, "{dup}");
    assert_eq!(dup["seq"], 5, "{dup}");
    assert_eq!(dup["id"], ids[&("alpha".to_string(), 5)], "{dup}");

    // The empty room: the next joiner owns it, with no role event.
    let mut ivy = client_as(&node, Some("ivy")).await;
    let j = ivy.ok(json!({"type":"join","room":"gamma"})).await;
    assert_eq!(j["seq"], 6, "{j}");
    assert_eq!(roles(&mut anon, "gamma").await, pairs(&[("ivy", "owner")]));
    let g = history(&mut ivy, "gamma").await;
    assert_eq!(
        g[..5],
        expected_events(&f, &ids, "gamma")[..],
        "old events of gamma"
    );
    assert_eq!(g.len(), 6, "the join and nothing else: {g:?}");
    assert_eq!(g[5]["type"], "join", "{g:?}");
    assert_eq!(g[5]["user_id"], "ivy", "{g:?}");

    // The new commands work in old rooms, with the migrated roles.
    bob.err(
        json!({"type":"set_role","room":"alpha","user":"cat","role":"admin"}),
        "forbidden",
    )
    .await;
    let inv = ann
        .ok(json!({"type":"invite","room":"alpha","user":"jon"}))
        .await;
    assert_eq!(inv["seq"], 10, "{inv}");
    let r = ann
        .ok(json!({"type":"set_role","room":"alpha","user":"bob","role":"admin"}))
        .await;
    assert_eq!(r["seq"], 11, "{r}");
    let mut jon = client_as(&node, Some("jon")).await;
    let j = jon.ok(json!({"type":"join","room":"alpha"})).await;
    assert_eq!(j["seq"], 12, "{j}");
    assert_eq!(
        roles(&mut anon, "alpha").await,
        pairs(&[
            ("ann", "owner"),
            ("bob", "admin"),
            ("cat", "member"),
            ("jon", "member")
        ])
    );
    eve.err(
        json!({"type":"set_role","room":"beta","user":"fay","role":"member"}),
        "forbidden",
    )
    .await;
    let r = fay
        .ok(json!({"type":"set_role","room":"beta","user":"eve","role":"admin"}))
        .await;
    assert_eq!(r["seq"], 9, "{r}");
    // The migrated owner leaves: ownership passes to the admin.
    let l = fay.ok(json!({"type":"leave","room":"beta"})).await;
    assert_eq!(l["seq"], 10, "{l}");
    assert_eq!(roles(&mut anon, "beta").await, pairs(&[("eve", "owner")]));
    let beta = history(&mut eve, "beta").await;
    assert_eq!(beta.len(), 11, "{beta:?}");
    assert_eq!(beta[..8], expected_events(&f, &ids, "beta")[..]);
    let succession = &beta[10];
    assert_eq!(succession["type"], "role", "{succession}");
    assert_eq!(succession["user_id"], "fay", "{succession}");
    assert_eq!(succession["target"], "eve", "{succession}");
    assert_eq!(succession["role"], "owner", "{succession}");

    // What the node serves now, to compare after a restart.
    let before_rooms = rooms(&mut anon).await;
    assert_eq!(
        before_rooms,
        vec![
            room_row("alpha", 4, 12, None),
            room_row("beta", 1, 11, None),
            room_row("gamma", 1, 6, None),
        ]
    );
    let before_alpha = history(&mut ann, "alpha").await;
    assert_eq!(before_alpha[..8], expected_events(&f, &ids, "alpha")[..]);
    let before_beta = beta;
    let before_gamma = history(&mut ivy, "gamma").await;
    let before_roles = [
        roles(&mut anon, "alpha").await,
        roles(&mut anon, "beta").await,
        roles(&mut anon, "gamma").await,
    ];
    for c in [anon, ann, bob, eve, fay, ivy, jon] {
        c.close().await;
    }

    node.terminate();
    let node = node.restart().await;
    let mut anon = client_as(&node, None).await;
    assert_eq!(anon.hello["epoch"], json!(epoch));
    assert_eq!(rooms(&mut anon).await, before_rooms);
    let mut ann = client_as(&node, Some("ann")).await;
    let mut eve = client_as(&node, Some("eve")).await;
    let mut ivy = client_as(&node, Some("ivy")).await;
    assert_eq!(history(&mut ann, "alpha").await, before_alpha);
    assert_eq!(history(&mut eve, "beta").await, before_beta);
    assert_eq!(history(&mut ivy, "gamma").await, before_gamma);
    let after_roles = [
        roles(&mut anon, "alpha").await,
        roles(&mut anon, "beta").await,
        roles(&mut anon, "gamma").await,
    ];
    assert_eq!(after_roles, before_roles);
    assert_eq!(
        rooms(&mut ann).await[0],
        room_row("alpha", 4, 12, Some("owner"))
    );
    assert_eq!(
        rooms(&mut eve).await[1],
        room_row("beta", 1, 11, Some("owner"))
    );
    // And the seq still continues, in every room.
    let m = ann
        .ok(json!({"type":"message","room":"alpha","message":"after the restart"}))
        .await;
    assert_eq!(m["seq"], 13, "{m}");
    let m = eve
        .ok(json!({"type":"message","room":"beta","message":"mine now"}))
        .await;
    assert_eq!(m["seq"], 12, "{m}");
    let m = ivy
        .ok(json!({"type":"message","room":"gamma","message":"mine too"}))
        .await;
    assert_eq!(m["seq"], 7, "{m}");

    let mut db = Db::open(&store).await;
    assert_eq!(
        db.int("SELECT count(*) FROM refinery_schema_history").await,
        3,
        "a restart applies nothing more"
    );
}
