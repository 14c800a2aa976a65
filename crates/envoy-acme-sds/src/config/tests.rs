use std::path::Path;
use std::time::Duration;

use xds_core::Listen;

use super::*;
use crate::keys::KeyType;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("envoy-acme-sds").chain(args.iter().copied()))
}

fn tsig_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("tsig.key");
    std::fs::write(
        &path,
        "key \"update-key\" { algorithm hmac-sha256; secret \"c2VjcmV0c2VjcmV0c2VjcmV0\"; };",
    )
    .expect("write");
    path.display().to_string()
}

#[test]
fn the_documented_command_line_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tsig = tsig_file(&dir);
    let storage = format!("disk:{}", dir.path().display());
    let cli = parse(&[
        "--acme-directory",
        "https://ca.example/dir",
        "--email",
        "ops@example.com",
        "--cert",
        "example.com,*.example.com",
        "--cert",
        "api=api.example.com",
        "--challenge",
        "dns-01",
        "--rfc2136-server",
        "127.0.0.1:53",
        "--tsig-key-file",
        &tsig,
        "--storage",
        &storage,
        "--key-type",
        "rsa2048",
        "--lock-delay",
        "0s",
    ])
    .expect("parses");
    assert!(cli.command.is_none());
    let settings = cli.run.resolve().expect("resolves");
    assert_eq!(settings.acme.directory_url, "https://ca.example/dir");
    assert_eq!(settings.acme.contact, vec!["ops@example.com"]);
    assert_eq!(settings.certificates.len(), 2);
    let first = &settings.certificates[0];
    assert_eq!(first.spec.secret_name.as_str(), "example.com");
    assert_eq!(first.zone, "example.com");
    assert_eq!(first.spec.key_type, KeyType::Rsa2048);
    assert_eq!(settings.certificates[1].spec.secret_name.as_str(), "api");
    assert_eq!(settings.lock_delay, Duration::ZERO);
    assert_eq!(
        settings.sds_listen,
        Listen::Tcp("127.0.0.1:20000".parse().expect("addr"))
    );
    assert_eq!(settings.admin_listen.to_string(), "127.0.0.1:9103");
    assert!(matches!(
        settings.challenge,
        ChallengeSettings::Rfc2136 { .. }
    ));
    assert!(matches!(
        settings.storage.location,
        StorageLocation::Disk(_)
    ));
}

#[test]
fn consul_connection_comes_from_flags_then_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        r#"
storage = "consul:certs"
allow_plaintext_keys = true
consul_addr = "https://consul.internal:8501"
consul_cacert = "/etc/consul/ca.pem"
consul_client_cert = "/etc/consul/client.pem"
consul_client_key = "/etc/consul/client-key.pem"
"#,
    )
    .expect("write");
    let config_arg = config.display().to_string();
    let resolve = |extra: &[&str]| {
        let mut args = vec!["--config", &config_arg, "--cert", "example.org"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--challenge", "http-01"]);
        parse(&args)
            .expect("parses")
            .run
            .resolve()
            .expect("resolves")
            .storage
            .consul
            .expect("consul storage")
    };
    let from_file = resolve(&[]);
    assert_eq!(
        from_file.address.to_string(),
        "https://consul.internal:8501"
    );
    assert_eq!(
        from_file.tls.client_cert.as_deref(),
        Some(Path::new("/etc/consul/client.pem"))
    );
    let flag_wins = resolve(&["--consul-addr", "http://127.0.0.1:8500"]);
    assert_eq!(flag_wins.address.to_string(), "http://127.0.0.1:8500");
    assert_eq!(flag_wins.tls.ca_cert, from_file.tls.ca_cert);
}

#[test]
fn file_certificates_add_to_flags_and_bad_fields_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tsig = tsig_file(&dir);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
storage = "consul:certs"
allow_plaintext_keys = true
challenge = "dns-01"
[rfc2136]
server = "127.0.0.1:5353"
tsig_key_file = "{tsig}"
zone = "example.org"
[[certificate]]
name = "www"
domains = ["www.example.org"]
validation_context_secret = "www-ca"
"#
        ),
    )
    .expect("write");
    let config_arg = config.display().to_string();
    let cli = parse(&["--config", &config_arg, "--cert", "example.org"]).expect("parses");
    let settings = cli.run.resolve().expect("resolves");
    assert_eq!(settings.certificates.len(), 2);
    let www = &settings.certificates[1];
    assert_eq!(www.spec.secret_name.as_str(), "www");
    assert_eq!(www.validation_context.as_deref(), Some("www-ca"));
    assert_eq!(www.zone, "example.org");
    assert!(settings.storage.consul.is_some());

    std::fs::write(
        &config,
        "storage = \"disk:/x\"\n[[certificate]]\ndomains = [\"a.example\"]\nkey_typ = \"rsa\"\n",
    )
    .expect("write");
    let error = parse(&["--config", &config_arg])
        .expect("parses")
        .run
        .resolve()
        .expect_err("unknown field");
    assert!(error.to_string().contains("key_typ"), "{error}");

    std::fs::write(
        &config,
        "storage = \"disk:/x\"\n[[certificate]]\ndomains = \"a.example\"\n",
    )
    .expect("write");
    let error = parse(&["--config", &config_arg])
        .expect("parses")
        .run
        .resolve()
        .expect_err("wrong type");
    assert!(
        error.to_string().contains("certificate[0].domains"),
        "{error}"
    );

    std::fs::write(
        &config,
        "storage = \"disk:/x\"\n[[certificate]]\ndomains = [\"bad_name.example\"]\n",
    )
    .expect("write");
    let error = parse(&["--config", &config_arg, "--challenge", "http-01"])
        .expect("parses")
        .run
        .resolve()
        .expect_err("bad domain");
    assert!(error.to_string().contains("certificate[0]"), "{error}");
}

#[test]
fn wildcards_with_http01_and_missing_pieces_are_refused() {
    let error = parse(&[
        "--storage",
        "disk:/x",
        "--challenge",
        "http-01",
        "--cert",
        "*.example.com",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect_err("wildcard over http-01");
    assert!(error.to_string().contains("only dns-01"), "{error}");

    let error = parse(&["--storage", "disk:/x", "--cert", "example.com"])
        .expect("parses")
        .run
        .resolve()
        .expect_err("no DNS server");
    assert!(error.to_string().contains("--rfc2136-server"), "{error}");

    let error = parse(&["--storage", "s3:bucket", "--cert", "example.com"])
        .expect("parses")
        .run
        .resolve()
        .expect_err("bad storage");
    assert!(error.to_string().contains("--storage"), "{error}");

    let error = parse(&["--lock-delay", "soon"]).expect_err("bad duration");
    assert!(error.to_string().contains("--lock-delay"), "{error}");
}

#[test]
fn renew_subcommand_takes_storage_and_names() {
    let cli = parse(&[
        "renew",
        "--cert",
        "example.com",
        "--storage",
        "consul:certs",
    ])
    .expect("parses");
    let Some(Command::Renew(args)) = cli.command else {
        panic!("not the renew subcommand");
    };
    let (storage, names) = args.resolve().expect("resolves");
    assert_eq!(names[0].as_str(), "example.com");
    assert_eq!(
        storage.location,
        StorageLocation::Consul {
            prefix: "certs".to_owned()
        }
    );
}

#[test]
fn durations_read_as_written() {
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("1d").is_err());
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn file_values_parse_as_their_flags_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &dir,
        r#"
storage = "disk:/x"
challenge = "http-01"
key_type = "rsa2048"
lock_delay = "45s"
session_ttl = "30s"
sds_listen = "unix:/run/sds.sock"
admin_listen = "127.0.0.1:19103"
[[certificate]]
domains = ["a.example"]
"#,
    );
    let settings = parse(&["--config", &config])
        .expect("parses")
        .run
        .resolve()
        .expect("resolves");
    assert_eq!(settings.certificates[0].spec.key_type, KeyType::Rsa2048);
    assert_eq!(settings.lock_delay, Duration::from_secs(45));
    assert_eq!(settings.session_ttl, Duration::from_secs(30));
    assert_eq!(settings.sds_listen, Listen::Unix("/run/sds.sock".into()));
    assert_eq!(settings.admin_listen.to_string(), "127.0.0.1:19103");

    let flags_win = parse(&[
        "--config",
        &config,
        "--lock-delay",
        "0s",
        "--key-type",
        "ecdsa-p256",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect("resolves");
    assert_eq!(flags_win.lock_delay, Duration::ZERO);
    assert_eq!(flags_win.certificates[0].spec.key_type, KeyType::EcdsaP256);
}

#[test]
fn bad_file_values_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("key_type = \"dsa\"", "key_type"),
        ("lock_delay = \"soon\"", "lock_delay"),
        ("sds_listen = \"unix:\"", "sds_listen"),
        ("admin_listen = \"nowhere\"", "admin_listen"),
        ("consul_token = \"secret\"", "consul_token"),
        ("log_format = \"json\"", "log_format"),
        (
            "[[certificate]]\ndomains = [\"a.example\"]\nkey_type = \"dsa\"",
            "certificate[0].key_type",
        ),
    ];
    for (text, key) in cases {
        let config = write_config(&dir, &format!("storage = \"disk:/x\"\n{text}\n"));
        let error = parse(&["--config", &config])
            .expect("parses")
            .run
            .resolve()
            .expect_err(text);
        assert!(error.to_string().contains(key), "{text}: {error}");
    }
}

#[test]
fn an_empty_unix_socket_path_is_refused_naming_the_flag() {
    let error = parse(&["--sds-listen", "unix:"]).expect_err("empty unix path");
    assert!(error.to_string().contains("--sds-listen"), "{error}");
    assert!(error.to_string().contains("socket path"), "{error}");
}

#[test]
fn help_shows_the_defaults_resolution_uses() {
    let help = <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    for shown in [
        "[default: 127.0.0.1:20000]",
        "[default: 127.0.0.1:9103]",
        "[default: 0.0.0.0:80]",
        "Consul lock delay after the renewing replica's session is invalidated [default: 15s]",
        "TTL of the lock session, at least 10s [default: 15s]",
        "Private key type of new certificates [default: ecdsa-p256]",
        "[default: dns-01]",
        "Log format [default: pretty]",
        "[default: 5s]",
    ] {
        assert!(help.contains(shown), "--help lacks {shown}:\n{help}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = format!("disk:{}", dir.path().display());
    let settings = parse(&[
        "--storage",
        &storage,
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect("resolves");
    assert_eq!(settings.sds_listen, Listen::Tcp(defaults::SDS_LISTEN));
    assert_eq!(settings.admin_listen, defaults::ADMIN_LISTEN);
    assert_eq!(settings.lock_delay, defaults::LOCK_DELAY);
    assert_eq!(settings.session_ttl, defaults::SESSION_TTL);
    assert_eq!(settings.shutdown_grace, defaults::SHUTDOWN_GRACE);
    assert!(matches!(
        settings.challenge,
        ChallengeSettings::Http01 { listen } if listen == defaults::HTTP01_LISTEN
    ));
}

#[test]
fn a_lock_delay_consul_would_refuse_is_refused_at_start() {
    let error = parse(&[
        "--storage",
        "disk:/x",
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
        "--lock-delay",
        "90s",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect_err("over Consul's maximum");
    assert!(error.to_string().contains("--lock-delay"), "{error}");
    assert!(error.to_string().contains("60s"), "{error}");
}

fn key_file(dir: &tempfile::TempDir, name: &str, byte: u8) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, [byte; 32]).expect("write");
    path.display().to_string()
}

fn consul_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--storage",
        "consul:certs",
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn consul_storage_without_a_key_is_refused_naming_both_flags() {
    let error = parse(&consul_args(&[]))
        .expect("parses")
        .run
        .resolve()
        .expect_err("plaintext keys in Consul");
    let text = error.to_string();
    assert!(text.contains("--encryption-key-file"), "{text}");
    assert!(text.contains("--allow-plaintext-keys"), "{text}");
    assert!(text.contains("KV read"), "{text}");

    let allowed = parse(&consul_args(&["--allow-plaintext-keys"]))
        .expect("parses")
        .run
        .resolve()
        .expect("allowed out loud");
    assert!(allowed.storage.plaintext_keys_allowed);
    assert!(allowed.storage.encryption.is_none());

    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(&dir, "current.key", 1);
    let sealed = parse(&consul_args(&["--encryption-key-file", &key]))
        .expect("parses")
        .run
        .resolve()
        .expect("sealed");
    assert!(sealed.storage.encryption.is_some());

    // Disk storage is one machine's directory: no key required there.
    parse(&[
        "--storage",
        "disk:/x",
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect("disk without a key");
}

#[test]
fn key_settings_come_from_the_file_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let current = key_file(&dir, "current.key", 1);
    let previous = key_file(&dir, "previous.key", 2);
    let config = write_config(
        &dir,
        &format!(
            "storage = \"consul:certs\"\nencryption_key_file = \"{current}\"\n\
             previous_encryption_key_file = \"{previous}\"\n"
        ),
    );
    let settings = parse(&[
        "--config",
        &config,
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect("resolves");
    let id = |byte| {
        crate::store::encryption::KeyEncryption::from_bytes(&[byte; 32])
            .expect("key")
            .key_id()
            .to_owned()
    };
    assert_eq!(
        settings.storage.encryption.as_ref().map(|k| k.key_id()),
        Some(id(1).as_str())
    );
    assert_eq!(
        settings
            .storage
            .previous_encryption
            .as_ref()
            .map(|k| k.key_id()),
        Some(id(2).as_str())
    );

    let config = write_config(
        &dir,
        "storage = \"consul:certs\"\nallow_plaintext_keys = true\n",
    );
    let settings = parse(&[
        "--config",
        &config,
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect("resolves");
    assert!(settings.storage.plaintext_keys_allowed);
}

#[test]
fn a_previous_key_needs_a_current_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let previous = key_file(&dir, "previous.key", 2);
    let error = parse(&consul_args(&[
        "--allow-plaintext-keys",
        "--previous-encryption-key-file",
        &previous,
    ]))
    .expect("parses")
    .run
    .resolve()
    .expect_err("previous without current");
    let text = error.to_string();
    assert!(text.contains("--previous-encryption-key-file"), "{text}");
    assert!(text.contains("--encryption-key-file"), "{text}");

    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "short").expect("write");
    let current = key_file(&dir, "current.key", 1);
    let error = parse(&consul_args(&[
        "--encryption-key-file",
        &current,
        "--previous-encryption-key-file",
        &bad.display().to_string(),
    ]))
    .expect("parses")
    .run
    .resolve()
    .expect_err("bad previous key");
    assert!(
        error
            .to_string()
            .starts_with("--previous-encryption-key-file"),
        "{error}"
    );
}

#[test]
fn following_routes_needs_allowed_domains_and_takes_its_defaults() {
    let base = [
        "--storage",
        "disk:/x",
        "--challenge",
        "http-01",
        "--follow-routes",
    ];
    let error = parse(&base)
        .expect("parses")
        .run
        .resolve()
        .expect_err("no allow-list");
    assert!(
        error.to_string().starts_with("--allowed-domains: required"),
        "{error}"
    );

    // No --cert at all: routed hosts bring their own certificates.
    let mut args = base.to_vec();
    args.extend(["--allowed-domains", "demo.test,Example.COM."]);
    let settings = parse(&args)
        .expect("parses")
        .run
        .resolve()
        .expect("resolves");
    assert!(settings.certificates.is_empty());
    let routes = settings.routes.expect("routes");
    assert_eq!(routes.prefix.as_str(), "edge");
    let allowed: Vec<&str> = routes.allowed.iter().map(|s| s.as_str()).collect();
    assert_eq!(allowed, vec!["demo.test", "example.com"]);
    assert_eq!(routes.orders_per_hour, defaults::ORDERS_PER_HOUR);
    assert_eq!(routes.unrouted_grace, defaults::UNROUTED_GRACE);

    let mut args = base.to_vec();
    args.extend([
        "--allowed-domains",
        "demo.test",
        "--tag-prefix",
        "web",
        "--orders-per-hour",
        "3",
        "--unrouted-grace",
        "2h",
    ]);
    let routes = parse(&args)
        .expect("parses")
        .run
        .resolve()
        .expect("resolves")
        .routes
        .expect("routes");
    assert_eq!(routes.prefix.as_str(), "web");
    assert_eq!(routes.orders_per_hour, 3);
    assert_eq!(routes.unrouted_grace, Duration::from_secs(7200));

    let mut args = base.to_vec();
    args.extend(["--allowed-domains", "*.demo.test"]);
    let error = parse(&args)
        .expect("parses")
        .run
        .resolve()
        .expect_err("wildcard suffix");
    assert!(error.to_string().contains("--allowed-domains"), "{error}");

    let mut args = base.to_vec();
    args.extend([
        "--allowed-domains",
        "demo.test",
        "--tag-prefix",
        "bad prefix",
    ]);
    let error = parse(&args)
        .expect("parses")
        .run
        .resolve()
        .expect_err("bad prefix");
    assert!(error.to_string().contains("--tag-prefix"), "{error}");

    let error = parse(&["--orders-per-hour", "many"]).expect_err("not a number");
    assert!(error.to_string().contains("--orders-per-hour"), "{error}");

    // Without --follow-routes the routed settings are refused, not ignored,
    // and no certificate at all still is.
    let error = parse(&[
        "--storage",
        "disk:/x",
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
        "--allowed-domains",
        "demo.test",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect_err("stray flag");
    assert!(
        error
            .to_string()
            .starts_with("--allowed-domains: applies only with --follow-routes"),
        "{error}"
    );
    let error = parse(&["--storage", "disk:/x", "--challenge", "http-01"])
        .expect("parses")
        .run
        .resolve()
        .expect_err("nothing to serve");
    assert!(error.to_string().contains("--cert"), "{error}");
}

#[test]
fn routed_settings_come_from_the_file_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &dir,
        r#"
storage = "disk:/x"
challenge = "http-01"
follow_routes = true
tag_prefix = "gw"
allowed_domains = ["demo.test"]
orders_per_hour = 7
unrouted_grace = "36h"
"#,
    );
    let routes = parse(&["--config", &config])
        .expect("parses")
        .run
        .resolve()
        .expect("resolves")
        .routes
        .expect("routes");
    assert_eq!(routes.prefix.as_str(), "gw");
    assert_eq!(routes.orders_per_hour, 7);
    assert_eq!(routes.unrouted_grace, Duration::from_secs(36 * 3600));
    // The flag's list replaces the file's.
    let routes = parse(&["--config", &config, "--allowed-domains", "other.test"])
        .expect("parses")
        .run
        .resolve()
        .expect("resolves")
        .routes
        .expect("routes");
    let allowed: Vec<&str> = routes.allowed.iter().map(|s| s.as_str()).collect();
    assert_eq!(allowed, vec!["other.test"]);

    let config = write_config(
        &dir,
        "storage = \"disk:/x\"\nchallenge = \"http-01\"\nfollow_routes = true\n",
    );
    let error = parse(&["--config", &config])
        .expect("parses")
        .run
        .resolve()
        .expect_err("no allow-list in the file either");
    assert!(error.to_string().contains("--allowed-domains"), "{error}");
}

/// `--follow-routes` with http-01 and (unless `extra` names another) disk
/// storage, plus `extra`.
fn routes_with(extra: &[&str]) -> Result<Settings, ConfigError> {
    let mut args = if extra.contains(&"--storage") {
        vec![]
    } else {
        vec!["--storage", "disk:/x"]
    };
    args.extend([
        "--challenge",
        "http-01",
        "--follow-routes",
        "--allowed-domains",
        "demo.test",
    ]);
    args.extend_from_slice(extra);
    parse(&args).expect("parses").run.resolve()
}

#[test]
fn routes_are_read_from_consul_unless_sources_say_otherwise() {
    let routes = routes_with(&[]).expect("resolves").routes.expect("routes");
    assert!(routes.consul.is_some());
    assert!(routes.nomad.is_none());
}

#[test]
fn routes_from_nomad_alone_with_disk_storage_need_no_consul() {
    let settings = routes_with(&["--sources", "nomad"]).expect("resolves");
    assert!(settings.storage.consul.is_none());
    let routes = settings.routes.expect("routes");
    assert!(routes.consul.is_none(), "no Consul read for routes");
    let nomad = routes.nomad.expect("Nomad read");
    assert_eq!(nomad.client.address.to_string(), defaults::NOMAD_ADDR);
    assert_eq!(nomad.namespaces, ["default"]);
}

#[test]
fn both_registries_and_several_namespaces_are_read_as_given() {
    let routes = routes_with(&[
        "--sources",
        "consul,nomad",
        "--nomad-addr",
        "https://nomad.internal:4646",
        "--nomad-namespace",
        "apps, web,apps",
    ])
    .expect("resolves")
    .routes
    .expect("routes");
    assert!(routes.consul.is_some());
    let nomad = routes.nomad.expect("Nomad read");
    assert_eq!(
        nomad.client.address.to_string(),
        "https://nomad.internal:4646"
    );
    assert_eq!(nomad.namespaces, ["apps", "web"]);

    // `*` alone: every namespace the token can read, one checked listing.
    for all in ["*", " * ,*"] {
        let nomad = routes_with(&["--sources", "nomad", "--nomad-namespace", all])
            .expect("resolves")
            .routes
            .expect("routes")
            .nomad
            .expect("Nomad read");
        assert_eq!(nomad.namespaces, ["*"], "{all:?}");
    }
}

#[test]
fn nomad_with_consul_storage_reads_routes_from_nomad_and_stores_in_consul() {
    let settings = routes_with(&[
        "--sources",
        "nomad",
        "--storage",
        "consul:acme",
        "--allow-plaintext-keys",
        "--consul-addr",
        "http://127.0.0.1:8501",
    ])
    .expect("resolves");
    assert!(settings.storage.consul.is_some(), "storage in Consul KV");
    let routes = settings.routes.expect("routes");
    assert!(routes.consul.is_none(), "routes not read from Consul");
    assert!(routes.nomad.is_some());
}

#[test]
fn the_nomad_token_file_is_read_and_a_missing_one_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("nomad.token");
    std::fs::write(&token, "secret-token\n").expect("write");
    let token = token.display().to_string();
    let nomad = routes_with(&["--sources", "nomad", "--nomad-token-file", &token])
        .expect("resolves")
        .routes
        .expect("routes")
        .nomad
        .expect("Nomad read");
    assert!(nomad.client.token.is_some());
    assert!(
        !format!("{:?}", nomad.client).contains("secret-token"),
        "the token stays out of Debug"
    );

    let missing = dir.path().join("absent.token").display().to_string();
    let error = routes_with(&["--sources", "nomad", "--nomad-token-file", &missing])
        .expect_err("no such file");
    assert!(error.to_string().contains(&missing), "{error}");
}

#[test]
fn bad_sources_and_nomad_settings_are_refused_naming_the_flag() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["--sources", "nomad,nomad"],
            "--sources: names `nomad` twice",
        ),
        (
            &["--sources", "nomad", "--nomad-namespace", "*,shop"],
            "--nomad-namespace: `*` already reads every namespace the token can read",
        ),
        (
            &["--sources", "nomad", "--nomad-namespace", "default,*"],
            "--nomad-namespace: `*` already reads every namespace the token can read",
        ),
        (
            &["--sources", "nomad", "--nomad-namespace", " , "],
            "--nomad-namespace: empty",
        ),
        (
            &["--sources", "nomad", "--nomad-addr", "ftp://nomad:4646"],
            "Nomad client: --nomad-addr",
        ),
        (
            &["--nomad-token-file", "/t"],
            "--nomad-token-file: applies only with --sources nomad",
        ),
        (
            &["--sources", "consul", "--nomad-token-file", "/t"],
            "--nomad-token-file: applies only with --sources nomad",
        ),
    ];
    for (extra, expected) in cases {
        let error = routes_with(extra).expect_err("refused");
        assert!(
            error.to_string().starts_with(expected),
            "{extra:?}: {error}"
        );
    }

    let error = parse(&["--sources", "etcd"]).expect_err("not a registry");
    assert!(error.to_string().contains("--sources"), "{error}");

    // Without --follow-routes, --sources means nothing and is refused.
    let error = parse(&[
        "--storage",
        "disk:/x",
        "--challenge",
        "http-01",
        "--cert",
        "a.example",
        "--sources",
        "nomad",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect_err("stray flag");
    assert!(
        error
            .to_string()
            .starts_with("--sources: applies only with --follow-routes"),
        "{error}"
    );
}

#[test]
fn sources_and_nomad_settings_come_from_the_file_and_flags_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        &dir,
        r#"
storage = "disk:/x"
challenge = "http-01"
follow_routes = true
allowed_domains = ["demo.test"]
sources = ["nomad"]
nomad_addr = "http://10.0.0.7:4646"
nomad_namespace = ["apps"]
"#,
    );
    let routes = parse(&["--config", &config])
        .expect("parses")
        .run
        .resolve()
        .expect("resolves")
        .routes
        .expect("routes");
    assert!(routes.consul.is_none());
    let nomad = routes.nomad.expect("Nomad read");
    assert_eq!(nomad.client.address.to_string(), "http://10.0.0.7:4646");
    assert_eq!(nomad.namespaces, ["apps"]);

    let routes = parse(&[
        "--config",
        &config,
        "--sources",
        "consul",
        "--nomad-namespace",
        "web",
    ])
    .expect("parses")
    .run
    .resolve()
    .expect("resolves")
    .routes
    .expect("routes");
    assert!(routes.consul.is_some());
    assert!(
        routes.nomad.is_none(),
        "the flag's list replaces the file's"
    );

    let config = write_config(
        &dir,
        "storage = \"disk:/x\"\nchallenge = \"http-01\"\nfollow_routes = true\n\
         allowed_domains = [\"demo.test\"]\nsources = [\"etcd\"]\n",
    );
    let error = parse(&["--config", &config])
        .expect("parses")
        .run
        .resolve()
        .expect_err("not a registry");
    assert!(error.to_string().contains("etcd"), "{error}");
}
