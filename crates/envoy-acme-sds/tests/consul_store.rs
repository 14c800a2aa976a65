//! The Consul pieces against a real Consul agent: the store specification
//! (see `store_suite`) against a KV prefix, fenced writes, the election, and
//! HTTP-01 tokens in KV (the followers' view of the prefix: `kv_follower.rs`).

#[macro_use]
mod store_suite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use consul_client::{
    Address, Client, ClientConfig, QueryOptions, SessionId, SessionRequest, Token,
};
use envoy_acme_sds::challenge::consul_tokens::ConsulTokenStore;
use envoy_acme_sds::challenge::http01::TokenStore;
use envoy_acme_sds::election::{Election, ElectionConfig, Leadership};
use envoy_acme_sds::store::consul::ConsulStore;
use envoy_acme_sds::store::encryption::KeyEncryption;
use envoy_acme_sds::store::{CertificateStore, RenewalRequest, SecretName, StoreError};
use store_suite::certificate;
use test_support::{ConsulAgent, ConsulOptions, eventually, http_request};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn client(consul: &ConsulAgent) -> Client {
    Client::new(ClientConfig::new(
        consul.http_url().parse::<Address>().expect("address"),
    ))
    .expect("client")
}

async fn session(client: &Client) -> consul_client::SessionId {
    client
        .session_create(&SessionRequest {
            ttl: Some(Duration::from_secs(30)),
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("session")
}

/// A KV prefix on an agent of its own, its renewal lock held by `holder`.
struct Prefix {
    _consul: ConsulAgent,
    client: Client,
    holder: SessionId,
}

const SPECIFIED_PREFIX: &str = "specified";

async fn prefix() -> Prefix {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client(&consul);
    let holder = session(&client).await;
    let store = ConsulStore::new(client.clone(), SPECIFIED_PREFIX, None).expect("store");
    assert!(
        client
            .kv_acquire(&store.lock_key(), "a", &holder)
            .await
            .expect("acquire")
    );
    Prefix {
        _consul: consul,
        client,
        holder,
    }
}

impl Prefix {
    fn key(&self, item: &str) -> String {
        format!("{SPECIFIED_PREFIX}/{item}")
    }
}

#[async_trait]
impl store_suite::Location for Prefix {
    fn store(&self, encryption: Option<Arc<KeyEncryption>>) -> Arc<dyn CertificateStore> {
        let store =
            ConsulStore::new(self.client.clone(), SPECIFIED_PREFIX, encryption).expect("store");
        Arc::new(store.fenced(self.holder.clone()))
    }

    async fn read_raw(&self, item: &str) -> Vec<u8> {
        self.client
            .kv_get(&self.key(item), &QueryOptions::default())
            .await
            .expect("kv")
            .value
            .and_then(|pair| pair.value)
            .expect("item present")
            .to_vec()
    }

    async fn write_raw(&self, item: &str, bytes: &[u8]) {
        self.client
            .kv_put(&self.key(item), bytes.to_vec())
            .await
            .expect("put");
    }

    async fn remove_raw(&self, item: &str) {
        self.client
            .kv_delete(&self.key(item))
            .await
            .expect("delete");
    }
}

store_specification!(prefix);

#[tokio::test]
async fn only_the_lock_holders_session_can_write() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client(&consul);
    let store = ConsulStore::new(client.clone(), "/fenced/", None).expect("store");
    assert_eq!(store.lock_key(), "fenced/leader");
    let name = SecretName::new("*.example.com").expect("name");
    let first = certificate(&["*.example.com"]);

    // No session at all: refused, nothing written.
    let refused = store
        .save_certificate(&name, &first)
        .await
        .expect_err("unfenced");
    assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
    assert!(store.load_certificate(&name).await.expect("load").is_none());

    // The holder writes.
    let holder = session(&client).await;
    assert!(
        client
            .kv_acquire(&store.lock_key(), "a", &holder)
            .await
            .expect("acquire")
    );
    let fenced = store.fenced(holder.clone());
    fenced
        .save_certificate(&name, &first)
        .await
        .expect("holder writes");
    let loaded = store
        .load_certificate(&name)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(loaded.metadata(), first.metadata());
    // One key per item, each small: nothing grows with the number of certificates.
    let items = client
        .kv_list(&store.key("certificates/"), &Default::default())
        .await
        .expect("kv")
        .value;
    let keys: Vec<&str> = items.iter().map(|pair| pair.key.as_str()).collect();
    assert_eq!(
        keys,
        ["certificate", "chain", "key", "metadata"]
            .map(|part| format!("fenced/certificates/%2A.example.com/{part}"))
    );
    for pair in &items {
        let size = pair.value.as_ref().map_or(0, |v| v.len());
        assert!(size > 0 && size < 16 * 1024, "{} is {size} bytes", pair.key);
    }

    // Another session takes the lock: the old holder's writes are refused whole.
    assert!(
        client
            .kv_release(&store.lock_key(), "a", &holder)
            .await
            .expect("release")
    );
    let successor = session(&client).await;
    assert!(
        client
            .kv_acquire(&store.lock_key(), "b", &successor)
            .await
            .expect("acquire")
    );
    let second = certificate(&["*.example.com"]);
    let fenced_out = fenced
        .save_certificate(&name, &second)
        .await
        .expect_err("fenced");
    assert!(
        matches!(fenced_out, StoreError::Fenced { .. }),
        "{fenced_out}"
    );
    let history = store_suite::one_order("*.example.com");
    assert!(matches!(
        fenced.save_order_history(&name, &history).await,
        Err(StoreError::Fenced { .. })
    ));
    let still = store
        .load_certificate(&name)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(still.metadata(), first.metadata());
    assert!(
        store
            .load_order_history(&name)
            .await
            .expect("history")
            .is_empty()
    );

    // Its session destroyed: still refused.
    client.session_destroy(&holder).await.expect("destroy");
    assert!(matches!(
        fenced.save_certificate(&name, &second).await,
        Err(StoreError::Fenced { .. })
    ));
    // The new holder writes.
    store
        .fenced(successor)
        .save_certificate(&name, &second)
        .await
        .expect("successor writes");
    assert_eq!(
        store
            .load_certificate(&name)
            .await
            .expect("load")
            .expect("stored")
            .metadata(),
        second.metadata()
    );

    // Renewal requests are operator input: written without the lock.
    let request = RenewalRequest {
        requested_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time"),
        replaces_serial: Some("01ab".to_owned()),
    };
    store
        .request_renewal(&name, &request)
        .await
        .expect("request");
    assert_eq!(
        store.load_renewal_request(&name).await.expect("load"),
        Some(request)
    );
}

#[tokio::test]
async fn one_replica_leads_and_the_lock_moves_on_resignation_or_session_loss() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client(&consul);
    let config = |holder: &str| ElectionConfig {
        lock_delay: Duration::ZERO,
        session_ttl: Duration::from_secs(10),
        retry_interval: Duration::from_millis(200),
        ..ElectionConfig::new("elect/leader", holder)
    };
    let a = Election::new(client.clone(), config("a"));
    let b = Election::new(client.clone(), config("b"));
    let (mut a_state, mut b_state) = (a.subscribe(), b.subscribe());
    let (a_stop, b_stop) = (CancellationToken::new(), CancellationToken::new());
    let a_task = tokio::spawn(a.run(a_stop.clone()));
    let b_task = tokio::spawn(b.run(b_stop.clone()));

    let leader_of = |a: &watch::Receiver<Leadership>, b: &watch::Receiver<Leadership>| match (
        a.borrow().is_leader(),
        b.borrow().is_leader(),
    ) {
        (true, false) => Some("a"),
        (false, true) => Some("b"),
        _ => None,
    };
    let first = eventually(
        "one leader",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let leader = leader_of(&a_state, &b_state);
            async move { leader }
        },
    )
    .await
    .expect("elected");
    let (leader_state, other_state, leader_stop) = if first == "a" {
        (&mut a_state, &mut b_state, a_stop.clone())
    } else {
        (&mut b_state, &mut a_state, b_stop.clone())
    };
    let Leadership::Leader(term) = leader_state.borrow().clone() else {
        panic!("not a leader");
    };
    let holder = client
        .kv_get("elect/leader", &Default::default())
        .await
        .expect("kv")
        .value
        .expect("lock key");
    assert_eq!(holder.session.as_ref(), Some(&term.session));
    assert_eq!(holder.value.as_deref(), Some(first.as_bytes()));

    // Its session destroyed behind its back: the term ends at once.
    client
        .session_destroy(&term.session)
        .await
        .expect("destroy");
    eventually(
        "the term ends",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let ended = term.ended.is_cancelled();
            async move { ended.then_some(()) }
        },
    )
    .await
    .expect("term ended");

    // Someone leads again; then the leader resigns and the other takes over.
    let second = eventually(
        "a leader again",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let leader = leader_of(leader_state, other_state);
            async move { leader.map(|_| ()) }
        },
    )
    .await;
    second.expect("re-elected");
    let (resigning, resigning_stop, remaining) = if leader_state.borrow().is_leader() {
        (leader_state, leader_stop, other_state)
    } else {
        let stop = if first == "a" {
            b_stop.clone()
        } else {
            a_stop.clone()
        };
        (other_state, stop, leader_state)
    };
    resigning_stop.cancel();
    eventually(
        "the other replica takes over",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let leads = remaining.borrow().is_leader();
            async move { leads.then_some(()) }
        },
    )
    .await
    .expect("handed over");
    assert!(!resigning.borrow().is_leader());

    a_stop.cancel();
    b_stop.cancel();
    a_task.await.expect("a stops");
    b_task.await.expect("b stops");
    let lock = client
        .kv_get("elect/leader", &Default::default())
        .await
        .expect("kv")
        .value
        .expect("lock key");
    assert_eq!(lock.session, None, "released on shutdown");
}

#[tokio::test]
async fn http01_tokens_put_by_one_replica_are_read_by_another() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let writer = ConsulTokenStore::new(client(&consul), "acme");
    let reader = ConsulTokenStore::new(client(&consul), "acme/");
    writer.put("tok_EN-1", "tok_EN-1.thumb").await.expect("put");
    assert_eq!(
        reader.get("tok_EN-1").await.expect("get").as_deref(),
        Some("tok_EN-1.thumb")
    );
    assert_eq!(reader.get("other").await.expect("get"), None);
    writer.remove("tok_EN-1").await.expect("remove");
    assert_eq!(reader.get("tok_EN-1").await.expect("get"), None);
}

/// A token whose policy does not (or no longer) cover the certificates:
/// Consul 1.8 answers its recursive read with 404 and nothing else, exactly
/// as if nothing were stored. The load must fail (the manager backs off and
/// reads again), not report the certificate missing, which would have a
/// valid certificate ordered again and replaced.
#[tokio::test]
async fn a_certificate_hidden_by_the_tokens_acl_is_a_failed_read_not_a_missing_one() {
    const MASTER: &str = "7c0d3a52-5b1e-4f7a-9d61-hidden-by-acl";
    let consul = ConsulAgent::start_with(ConsulOptions {
        acl_master_token: Some(MASTER.to_owned()),
        ..ConsulOptions::default()
    })
    .await
    .expect("consul with ACLs starts");
    let with_token = |secret: &str| {
        Client::new(ClientConfig {
            token: Some(Token::new(secret).expect("token")),
            ..ClientConfig::new(consul.http_url().parse::<Address>().expect("address"))
        })
        .expect("client")
    };
    let master = with_token(MASTER);
    let store = ConsulStore::new(master.clone(), "hidden", None).expect("store");
    let holder = session(&master).await;
    assert!(
        master
            .kv_acquire(&store.lock_key(), "a", &holder)
            .await
            .expect("acquire")
    );
    let name = SecretName::new("example.com").expect("name");
    let stored = certificate(&["example.com"]);
    store
        .fenced(holder)
        .save_certificate(&name, &stored)
        .await
        .expect("holder writes");

    let acl_put = |path: &'static str, body: serde_json::Value| {
        let addr = consul.http_addr();
        async move {
            let response = http_request(
                "PUT",
                addr,
                path,
                &[("x-consul-token", MASTER)],
                body.to_string().into_bytes(),
            )
            .await
            .expect("ACL request");
            assert_eq!(response.status, 200, "{path}: {}", response.body);
            serde_json::from_str::<serde_json::Value>(&response.body).expect("JSON")
        }
    };
    let policy = acl_put(
        "/v1/acl/policy",
        serde_json::json!({"Name": "elsewhere", "Rules": r#"key_prefix "unrelated/" { policy = "read" }"#}),
    )
    .await;
    let token = acl_put(
        "/v1/acl/token",
        serde_json::json!({"Policies": [{"ID": policy["ID"]}]}),
    )
    .await;
    let narrowed = ConsulStore::new(
        with_token(token["SecretID"].as_str().expect("secret")),
        "hidden",
        None,
    )
    .expect("store");

    let hidden = narrowed
        .load_certificate(&name)
        .await
        .expect_err("a certificate hidden by the ACL is not a missing one");
    assert!(matches!(hidden, StoreError::Consul { .. }), "{hidden}");
    // The token that may read it still reads it, and a certificate never
    // stored is still absent.
    assert_eq!(
        store
            .load_certificate(&name)
            .await
            .expect("load")
            .expect("stored")
            .metadata(),
        stored.metadata()
    );
    let never = SecretName::new("never.example.com").expect("name");
    assert!(
        store
            .load_certificate(&never)
            .await
            .expect("load")
            .is_none()
    );
}
