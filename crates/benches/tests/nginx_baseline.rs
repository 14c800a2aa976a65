//! The nginx baseline really proxies, and follows upstream changes by reload.

use std::time::Duration;

use benches::nginx::NginxGateway;
use demo::backend::{Behaviour, Instance};
use test_support::{free_port, http_get};

#[tokio::test]
async fn nginx_follows_upstream_changes_by_reloading() {
    let a = Instance::start(
        "a".to_owned(),
        "127.0.0.1".parse().expect("ip"),
        Behaviour::default(),
    )
    .await
    .expect("a");
    let b = Instance::start(
        "b".to_owned(),
        "127.0.0.1".parse().expect("ip"),
        Behaviour::default(),
    )
    .await
    .expect("b");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut nginx = NginxGateway::start(listen, vec![a.addr])
        .await
        .expect("nginx starts");
    assert_eq!(http_get(listen, "/").await.expect("via nginx").body, "a\n");
    nginx.set_upstreams(vec![b.addr]).expect("reload");
    let switched = test_support::eventually(
        "nginx to route to b",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { http_get(listen, "/").await.ok().filter(|r| r.body == "b\n") },
    )
    .await;
    assert!(switched.is_ok(), "nginx never switched to b");
    assert_eq!(nginx.reloads, 1);
}
