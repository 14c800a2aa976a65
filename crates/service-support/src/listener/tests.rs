use clap::Parser;

use super::*;

#[derive(Debug, Clone)]
struct Names;

impl ServerFlags for Names {
    const LISTEN: Flag = Flag {
        long: "xds-listen",
        env: "TEST_XDS_LISTEN",
        value_name: "XDS_LISTEN",
        help: "Where Envoy connects",
    };
    const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);
    const TLS_CERT: Flag = Flag {
        long: "xds-tls-cert",
        env: "TEST_XDS_TLS_CERT",
        value_name: "XDS_TLS_CERT",
        help: "Certificate chain",
    };
    const TLS_KEY: Flag = Flag {
        long: "xds-tls-key",
        env: "TEST_XDS_TLS_KEY",
        value_name: "XDS_TLS_KEY",
        help: "Private key",
    };
    const TLS_CLIENT_CA: Flag = Flag {
        long: "xds-tls-client-ca",
        env: "TEST_XDS_TLS_CLIENT_CA",
        value_name: "XDS_TLS_CLIENT_CA",
        help: "Client CA",
    };
}

impl AdminFlags for Names {
    const LISTEN: Flag = Flag {
        long: "admin-listen",
        env: "TEST_ADMIN_LISTEN",
        value_name: "ADMIN_LISTEN",
        help: "Admin listener",
    };
    const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9102);
}

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs<Names>,
    #[command(flatten)]
    admin: AdminArgs<Names>,
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
}

#[test]
fn defaults_apply_when_nothing_is_given_and_show_in_help() {
    let cli = parse(&[]).expect("parses");
    assert_eq!(
        cli.server.listen(),
        Listen::Tcp("127.0.0.1:15000".parse().expect("addr"))
    );
    assert_eq!(cli.admin.listen().to_string(), "127.0.0.1:9102");
    assert!(cli.server.tls_options().expect("no files").is_none());
    let help = <Cli as clap::CommandFactory>::command()
        .render_long_help()
        .to_string();
    assert!(
        help.contains("Where Envoy connects [default: 127.0.0.1:15000]"),
        "{help}"
    );
    assert!(
        help.contains("--xds-tls-client-ca <XDS_TLS_CLIENT_CA>"),
        "{help}"
    );
}

#[test]
fn listen_takes_host_port_or_a_unix_path() {
    assert_eq!(
        parse_listen("0.0.0.0:15000").expect("tcp"),
        Listen::Tcp("0.0.0.0:15000".parse().expect("addr"))
    );
    assert_eq!(
        parse_listen("unix:/run/xds.sock").expect("unix"),
        Listen::Unix("/run/xds.sock".into())
    );
    assert_eq!(
        parse_listen("unix:///run/xds.sock").expect("unix url"),
        Listen::Unix("/run/xds.sock".into())
    );
    assert!(parse_listen("localhost").is_err());
}

#[test]
fn an_empty_unix_path_is_refused_naming_the_flag() {
    for empty in ["unix:", "unix://"] {
        let error = parse(&["--xds-listen", empty]).expect_err("empty unix path");
        let text = error.to_string();
        assert!(text.contains("--xds-listen"), "{text}");
        assert!(text.contains("needs a socket path"), "{text}");
    }
}

#[test]
fn tls_files_go_together_and_errors_name_the_flag() {
    let error = parse(&["--xds-tls-cert", "c.pem"]).expect_err("key missing");
    assert!(error.to_string().contains("--xds-tls-key"), "{error}");
    let error = parse(&["--xds-tls-client-ca", "ca.pem"]).expect_err("cert missing");
    assert!(error.to_string().contains("--xds-tls-cert"), "{error}");

    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "CERT").expect("write");
    let cert = cert.display().to_string();
    let cli = parse(&[
        "--xds-tls-cert",
        &cert,
        "--xds-tls-key",
        "/nonexistent/key.pem",
    ])
    .expect("parses");
    let error = cli.server.tls_options().expect_err("no key file");
    assert!(error.to_string().contains("--xds-tls-key"), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/key.pem"),
        "{error}"
    );
}

#[test]
fn the_first_layer_wins_and_tls_files_stay_together() {
    let flags = parse(&["--xds-listen", "unix:/run/a.sock"]).expect("parses");
    let file = ServerArgs::<Names> {
        listen: Some(Listen::Tcp("127.0.0.1:1".parse().expect("addr"))),
        tls_cert: Some("file-cert.pem".into()),
        tls_key: Some("file-key.pem".into()),
        ..ServerArgs::default()
    };
    let merged = flags.server.or(file.clone());
    assert_eq!(merged.listen(), Listen::Unix("/run/a.sock".into()));
    assert_eq!(merged.tls_key, file.tls_key);
    let with_cert = ServerArgs::<Names> {
        tls_cert: Some("flag-cert.pem".into()),
        tls_key: Some("flag-key.pem".into()),
        ..ServerArgs::default()
    };
    let merged = with_cert.or(file);
    assert_eq!(merged.tls_key.as_deref(), Some(Path::new("flag-key.pem")));
    assert_eq!(merged.tls_client_ca, None);
}
