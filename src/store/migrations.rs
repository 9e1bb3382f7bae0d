//! Migrations: the plain SQL files of `sql/` (PostgreSQL) and `sql/sqlite/`
//! (the same tables in SQLite's dialect), applied in order at start-up (and
//! by `confab migrate`) by the `refinery` crate, which records them in
//! `refinery_schema_history`.
//!
//! Databases made before refinery recorded their migrations in a table of
//! our own, `schema_migrations`. Such a database is adopted: refinery marks
//! the versions it lists as applied without running them again, then
//! applies the newer ones as usual. `schema_migrations` is left as it was.

use anyhow::Context as _;
use refinery::{Migration, Runner, Target};

/// One line per migration: refinery's name (`V<version>__<name>`), the
/// PostgreSQL file and the SQLite file. A new migration is a pair of files
/// and a line here.
const MIGRATIONS: &[(&str, &str, &str)] = &[
    (
        "V1__init",
        include_str!("../../sql/0001_init.sql"),
        include_str!("../../sql/sqlite/0001_init.sql"),
    ),
    (
        "V2__rooms_with_owners",
        include_str!("../../sql/0002_rooms_with_owners.sql"),
        include_str!("../../sql/sqlite/0002_rooms_with_owners.sql"),
    ),
    (
        "V3__messages_that_live",
        include_str!("../../sql/0003_messages_that_live.sql"),
        include_str!("../../sql/sqlite/0003_messages_that_live.sql"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// The runner for a dialect; `adopt` is the last version a pre-refinery
/// `schema_migrations` table says was applied, to be marked without running.
pub fn runner(dialect: Dialect, adopt: Option<i64>) -> anyhow::Result<Runner> {
    let migrations = MIGRATIONS
        .iter()
        .map(|(name, pg, lite)| {
            let sql = match dialect {
                Dialect::Postgres => pg,
                Dialect::Sqlite => lite,
            };
            Migration::unapplied(name, sql).with_context(|| format!("migration {name}"))
        })
        .collect::<anyhow::Result<Vec<Migration>>>()?;
    let runner = Runner::new(&migrations);
    Ok(match adopt {
        Some(version) => {
            let version = i32::try_from(version).context("schema_migrations version")?;
            runner.set_target(Target::FakeVersion(version))
        }
        None => runner,
    })
}

/// The runner that applies the migrations up to `version` and no further:
/// how the upgrade tests make a database as an older Confab left it.
pub fn runner_up_to(dialect: Dialect, version: i32) -> anyhow::Result<Runner> {
    Ok(runner(dialect, None)?.set_target(Target::Version(version)))
}

/// Logs what a run applied.
pub fn log_report(dialect: Dialect, report: &refinery::Report) {
    for m in report.applied_migrations() {
        log::info!("applied {dialect:?} migration {m}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_has_a_valid_name_and_both_dialects() {
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let runner = runner(dialect, None).unwrap();
            let versions: Vec<i32> = runner
                .get_migrations()
                .iter()
                .map(|m| m.version())
                .collect();
            let expected: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
            assert_eq!(versions, expected, "versions are 1, 2, 3, … in order");
        }
    }

    #[test]
    fn a_pre_refinery_sqlite_database_is_adopted_not_migrated_twice() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        // As the hand-written runner of earlier versions left it.
        conn.execute_batch(MIGRATIONS[0].2).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                             applied_at TEXT NOT NULL);
             INSERT INTO schema_migrations VALUES (1, '0001_init', '2026-01-01T00:00:00Z');",
        )
        .unwrap();
        let epoch: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .unwrap();
        crate::store::sqlite::migrate(&mut conn).expect("adopted");
        crate::store::sqlite::migrate(&mut conn).expect("and again: nothing to do");
        let again: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(again, epoch, "the init migration did not run again");
        let recorded: i64 = conn
            .query_row("SELECT count(*) FROM refinery_schema_history", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(recorded, MIGRATIONS.len() as i64);
    }
}
