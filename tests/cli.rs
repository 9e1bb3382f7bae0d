//! The command line: `--help` documents every setting where the README and
//! `.env.example` do, `--help` and `--version` start nothing, `migrate`
//! migrates and exits, and a bad value names its variable.

use std::collections::BTreeSet;
use std::process::{Command, Output};

fn confab(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run confab")
}

fn repo_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `[env: NAME=...]` or `[env: NAME]` in clap's help.
fn help_vars(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect()
        })
        .collect()
}

/// The rows of the README's Configuration table (`| \`NAME\` | default | what |`).
fn readme_vars(readme: &str) -> BTreeSet<String> {
    let start = readme
        .find("\n## Configuration")
        .expect("README has a Configuration section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|v| {
            v.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}

/// `# NAME=...` lines of `.env.example`.
fn env_example_vars(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|l| l.split_once('='))
        .map(|(name, _)| name)
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_readme_and_env_example_list_the_same_variables() {
    let dir = tempfile::tempdir().unwrap();
    let out = confab(dir.path(), &["--help"], &[]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let from_help = help_vars(&help);
    assert!(
        from_help.contains("PORT") && from_help.contains("DATABASE_URL"),
        "{help}"
    );
    assert_eq!(
        from_help,
        readme_vars(&repo_file("README.md")),
        "--help vs README.md"
    );
    assert_eq!(
        from_help,
        env_example_vars(&repo_file(".env.example")),
        "--help vs .env.example"
    );
    // Each setting shows its default (or says how it is chosen).
    for line in help.lines().filter(|l| l.contains("[env: ")) {
        assert!(!line.trim().is_empty());
    }
    assert_eq!(
        help.matches("[default: ").count(),
        from_help.len(),
        "{help}"
    );
}

#[test]
fn help_and_version_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["--version"],
        &["serve", "--help"],
        &["migrate", "--help"],
    ] {
        let out = confab(dir.path(), args, &[("PORT", "1")]);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let version = confab(dir.path(), &["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("confab {}", env!("CARGO_PKG_VERSION"))
    );
    let created: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        created.is_empty(),
        "--help or --version created {created:?}"
    );
}

#[test]
fn migrate_creates_the_store_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let out = confab(
        dir.path(),
        &["migrate"],
        &[("SQLITE_PATH", db.to_str().unwrap()), ("PORT", "1")],
    );
    assert!(out.status.success(), "{out:?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let applied: i64 = conn
        .query_row("SELECT count(*) FROM refinery_schema_history", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(applied >= 1);
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 0);
}

#[test]
fn a_bad_value_stops_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = confab(dir.path(), &[], &[("PORT", "eighty")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PORT=\"eighty\""), "{err}");
    let out = confab(dir.path(), &["--max-frame-bytes=-5"], &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAX_FRAME_BYTES"));
}
