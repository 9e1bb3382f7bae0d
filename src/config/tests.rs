//! Settings: defaults, bad values, secrets, flags.
use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_give_the_embedded_store_on_8080() {
    let c = Config::from_vars(vars(&[])).unwrap();
    assert_eq!(c.port, 8080);
    assert_eq!(
        c.store,
        StoreConfig::Sqlite {
            path: "confab.db".into()
        }
    );
    assert_eq!(c.replay_limit, 10_000);
    assert_eq!(c.max_message_chars, 4096);
    assert!(c.node_id.starts_with("node-"));
    assert!(c.redis_url.is_none());
}

#[test]
fn an_empty_variable_takes_its_default() {
    let c = Config::from_vars(vars(&[("PORT", ""), ("DATABASE_URL", " ")])).unwrap();
    assert_eq!(c.port, 8080);
    assert!(matches!(c.store, StoreConfig::Sqlite { .. }));
}

#[test]
fn a_bad_value_names_the_variable() {
    let err = Config::from_vars(vars(&[("PORT", "eighty")])).unwrap_err();
    assert!(format!("{err:#}").contains("PORT"), "{err:#}");
    let err = Config::from_vars(vars(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
    assert!(err.to_string().contains("DATABASE_URL"));
    let err = Config::from_vars(vars(&[("RATE_LIMIT_PER_SEC", "0")])).unwrap_err();
    assert!(err.to_string().contains("RATE_LIMIT_PER_SEC"));
}

#[test]
fn passwords_are_not_printed() {
    let c = Config::from_vars(vars(&[
        ("DATABASE_URL", "postgres://u:hunter2@h/db"),
        ("REDIS_URL", "redis://:swordfish@h:6379/"),
    ]))
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("swordfish"), "{shown}");
    assert!(shown.contains("redis://:***@h:6379/"), "{shown}");
}

#[test]
fn token_mode_takes_one_key() {
    let secret = "0123456789abcdef0123456789abcdef";
    let c = Config::from_vars(vars(&[])).unwrap();
    assert!(c.auth.is_none() && c.allowed_origins.is_none());
    assert_eq!(c.host, "127.0.0.1");
    let c = Config::from_vars(vars(&[("AUTH_SECRET", secret)])).unwrap();
    let auth = c.auth.expect("token mode");
    assert_eq!(auth.leeway(), Duration::from_secs(30));
    let c = Config::from_vars(vars(&[("AUTH_SECRET", secret)])).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains(secret), "{shown}");
    let err = Config::from_vars(vars(&[
        ("AUTH_SECRET", secret),
        ("AUTH_PUBLIC_KEY", "/k.pem"),
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("both set"), "{err}");
    let err = Config::from_vars(vars(&[("AUTH_AUDIENCE", "confab")])).unwrap_err();
    assert!(err.to_string().contains("AUTH_AUDIENCE"), "{err}");
    let err = Config::from_vars(vars(&[("AUTH_SECRET", "short")])).unwrap_err();
    assert!(err.to_string().contains("AUTH_SECRET"), "{err}");
    let err =
        Config::from_vars(vars(&[("AUTH_SECRET", secret), ("AUTH_LEEWAY_SECS", "x")])).unwrap_err();
    assert!(err.to_string().contains("AUTH_LEEWAY_SECS"), "{err}");
    let err = Config::from_vars(vars(&[("ALLOWED_ORIGINS", "example.com")])).unwrap_err();
    assert!(err.to_string().contains("ALLOWED_ORIGINS"), "{err}");
    let c = Config::from_vars(vars(&[("ALLOWED_ORIGINS", "https://a.example")])).unwrap();
    assert_eq!(c.allowed_origins.unwrap().list(), ["https://a.example"]);
}

#[test]
fn confab_token_takes_a_user_and_a_ttl() {
    let cli = Cli::try_parse_from(["confab", "token", "alice", "--ttl", "15m"]).unwrap();
    let Some(Cmd::Token { user, ttl }) = cli.command else {
        panic!("not token");
    };
    assert_eq!((user.as_str(), ttl), ("alice", Duration::from_secs(900)));
    let cli = Cli::try_parse_from(["confab", "token", "bob"]).unwrap();
    let Some(Cmd::Token { ttl, .. }) = cli.command else {
        panic!("not token");
    };
    assert_eq!(ttl, Duration::from_secs(3600));
    assert!(Cli::try_parse_from(["confab", "token", "bob", "--ttl", "soon"]).is_err());
    assert!(Cli::try_parse_from(["confab", "token"]).is_err());
}

#[test]
fn bus_secret_is_long_and_never_shown() {
    let secret = "bus-secret-0123456789-0123456789-x";
    let c = Config::from_vars(vars(&[("BUS_SECRET", secret)])).unwrap();
    assert!(c.bus_key.is_some());
    let shown = format!("{c:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(Config::from_vars(vars(&[])).unwrap().bus_key.is_none());
    let err = Config::from_vars(vars(&[("BUS_SECRET", "short")])).unwrap_err();
    assert!(err.to_string().contains("BUS_SECRET"), "{err}");
}

#[test]
fn every_setting_is_a_flag_too() {
    let cli =
        Cli::try_parse_from(["confab", "serve", "--port", "9001", "--redis-channel", "c"]).unwrap();
    assert_eq!(cli.command, Some(Cmd::Serve));
    let c = Config::from_settings(&cli.settings).unwrap();
    assert_eq!((c.port, c.redis_channel.as_str()), (9001, "c"));
    let cli = Cli::try_parse_from(["confab", "--port", "x"]).unwrap();
    let err = Config::from_settings(&cli.settings).unwrap_err();
    assert!(err.to_string().contains("PORT"), "{err}");
}
