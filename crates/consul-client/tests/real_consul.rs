//! The client against a real Consul 1.8.7 dev agent (started by
//! `test-support` on free loopback ports, killed on drop).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use consul_client::{
    AgentCheck, AgentServiceRegistration, Backoff, CatalogCheck, CatalogDeregistration,
    CatalogRegistration, CatalogService, CheckStatus, Client, ClientConfig, Continuity, Error,
    HealthFilter, HealthState, KvCondition, KvWrite, Lock, Maintenance, QueryOptions, RequestClass,
    ServiceAddress, ServiceEntry, SessionBehavior, SessionId, SessionRequest, Token, TxnOp,
    TxnOutcome, Watch, WatchConfig, WatchEvent, Weights,
};
use futures::StreamExt;
use test_support::{ConsulAgent, ConsulOptions};
use tokio::time::Instant;

/// Only guards against a hang; never a measurement.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn client_for(consul: &ConsulAgent) -> Client {
    Client::new(ClientConfig::new(
        consul.http_url().parse().expect("valid address"),
    ))
    .expect("valid config")
}

async fn next<T>(watch: &mut Watch<T>) -> WatchEvent<T> {
    tokio::time::timeout(HANG_GUARD, watch.next())
        .await
        .expect("the watch yields an event")
        .expect("a watch never ends")
}

/// Drives `watch` in its own task, as a service does, so a query is always
/// in flight; events arrive on the returned channel.
fn drive<T: Send + Sync + 'static>(
    mut watch: Watch<T>,
) -> tokio::sync::mpsc::UnboundedReceiver<WatchEvent<T>> {
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = watch.next().await {
            if events.send(event).is_err() {
                break;
            }
        }
    });
    received
}

async fn received<T>(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<WatchEvent<T>>,
) -> WatchEvent<T> {
    tokio::time::timeout(HANG_GUARD, events.recv())
        .await
        .expect("the watch yields an event")
        .expect("the driving task runs")
}

async fn health(client: &Client, service: &str, filter: HealthFilter) -> Vec<ServiceEntry> {
    client
        .health_service(service, filter, &QueryOptions::default())
        .await
        .expect("health answered")
        .value
}

fn ids(entries: &[ServiceEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.service.id.as_str()).collect()
}

async fn ttl_session(client: &Client, name: &str) -> SessionId {
    client
        .session_create(&SessionRequest {
            name: Some(name.to_owned()),
            ttl: Some(Duration::from_secs(30)),
            checks: Some(Vec::new()),
            ..SessionRequest::default()
        })
        .await
        .expect("session created")
}

#[tokio::test]
async fn agent_self_datacenter_and_stale_reads() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);

    let agent = client.agent_self().await.expect("agent/self");
    assert_eq!(agent.datacenter, "dc1");
    assert!(agent.version.starts_with("1.8"), "{}", agent.version);

    let named = client
        .catalog_services(&QueryOptions::default().datacenter("dc1"))
        .await
        .expect("dc1 is known");
    assert!(named.value.contains_key("consul"));
    let error = client
        .catalog_services(&QueryOptions::default().datacenter("nowhere"))
        .await
        .expect_err("no such datacenter");
    assert!(
        matches!(&error, Error::Status { status: 500, body, .. } if body.contains("No path to datacenter")),
        "{error:?}"
    );

    let stale = client
        .catalog_services(&QueryOptions::default().stale())
        .await
        .expect("stale read");
    assert_eq!(stale.meta.known_leader, Some(true));
    assert!(stale.meta.last_contact.is_some());
    assert!(stale.meta.index.is_some_and(|i| i > 0));
}

#[tokio::test]
async fn agent_services_health_checks_and_maintenance() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let registration = AgentServiceRegistration {
        id: Some("web-1".to_owned()),
        name: "web".to_owned(),
        tags: vec!["v1".to_owned()],
        address: "127.0.0.2".to_owned(),
        port: 8080,
        meta: BTreeMap::from([("version".to_owned(), "1.2.3".to_owned())]),
        weights: Some(Weights {
            passing: 10,
            warning: 2,
        }),
        tagged_addresses: BTreeMap::from([(
            "lan".to_owned(),
            ServiceAddress {
                address: "127.0.0.2".to_owned(),
                port: 8080,
            },
        )]),
        checks: vec![AgentCheck::ttl("alive", Duration::from_secs(60)).with_id("web-1:ttl")],
        ..AgentServiceRegistration::default()
    };
    client
        .agent_service_register(&registration)
        .await
        .expect("registered");

    // A TTL check starts critical: present in "all", absent from "passing".
    let all = health(&client, "web", HealthFilter::All).await;
    assert_eq!(ids(&all), ["web-1"]);
    let entry = &all[0];
    assert_eq!(entry.status(), CheckStatus::Critical);
    assert_eq!(entry.node.datacenter, "dc1");
    assert_eq!(entry.node.address, "127.0.0.1");
    assert!(
        entry.node.tagged_addresses.contains_key("lan"),
        "{:?}",
        entry.node
    );
    assert_eq!(entry.service.tags, ["v1"]);
    assert_eq!(entry.service.meta["version"], "1.2.3");
    assert_eq!(
        entry.service.weights,
        Weights {
            passing: 10,
            warning: 2
        }
    );
    assert_eq!(entry.service.tagged_addresses["lan"].port, 8080);
    assert_eq!(entry.address(), "127.0.0.2");
    let ttl = entry
        .checks
        .iter()
        .find(|c| c.check_id == "web-1:ttl")
        .expect("the TTL check");
    assert_eq!(ttl.check_type, "ttl");
    assert_eq!(ttl.service_id, "web-1");
    assert!(entry.checks.iter().any(|c| c.check_id == "serfHealth"));
    assert!(
        health(&client, "web", HealthFilter::PassingOnly)
            .await
            .is_empty()
    );

    client
        .agent_check_pass("web-1:ttl", "ok")
        .await
        .expect("pass");
    let passing = health(&client, "web", HealthFilter::PassingOnly).await;
    assert_eq!(ids(&passing), ["web-1"]);
    assert_eq!(passing[0].status(), CheckStatus::Passing);

    client
        .agent_check_warn("web-1:ttl", "slow")
        .await
        .expect("warn");
    assert_eq!(
        health(&client, "web", HealthFilter::All).await[0].status(),
        CheckStatus::Warning
    );
    assert!(
        health(&client, "web", HealthFilter::PassingOnly)
            .await
            .is_empty()
    );
    let checks = client
        .health_checks("web", &QueryOptions::default())
        .await
        .expect("checks")
        .value;
    assert_eq!(checks.len(), 1, "only the service's own check: {checks:?}");
    assert_eq!(checks[0].status, CheckStatus::Warning);
    assert_eq!(checks[0].output, "slow");
    let warning = client
        .health_state(HealthState::Warning, &QueryOptions::default())
        .await
        .expect("state")
        .value;
    assert_eq!(
        warning
            .iter()
            .map(|c| c.check_id.as_str())
            .collect::<Vec<_>>(),
        ["web-1:ttl"]
    );
    let any = client
        .health_state(HealthState::Any, &QueryOptions::default())
        .await
        .expect("state")
        .value;
    assert!(any.iter().any(|c| c.check_id == "serfHealth"));
    assert!(any.iter().any(|c| c.check_id == "web-1:ttl"));
    // The streamed, check-by-check read of the same answer sees the same
    // checks, borrowing their names from Consul's text.
    let streamed = client
        .health_state_fold(
            HealthState::Any,
            &QueryOptions::default(),
            Vec::new(),
            |seen, check| {
                assert!(
                    matches!(check.check_id, std::borrow::Cow::Borrowed(_)),
                    "{check:?}"
                );
                seen.push((check.check_id.into_owned(), check.status));
            },
        )
        .await
        .expect("streamed state")
        .value;
    assert_eq!(
        streamed,
        any.iter()
            .map(|c| (c.check_id.clone(), c.status))
            .collect::<Vec<_>>()
    );

    client
        .agent_check_fail("web-1:ttl", "down")
        .await
        .expect("fail");
    let critical = client
        .health_state(HealthState::Critical, &QueryOptions::default())
        .await
        .expect("state")
        .value;
    assert!(critical.iter().any(|c| c.check_id == "web-1:ttl"));
    // Only the checks not passing: the failing one, not the agent's own.
    let not_passing = client
        .health_state(HealthState::NotPassing, &QueryOptions::default())
        .await
        .expect("not passing")
        .value;
    assert_eq!(
        not_passing
            .iter()
            .map(|c| (c.check_id.as_str(), c.status))
            .collect::<Vec<_>>(),
        [("web-1:ttl", CheckStatus::Critical)]
    );
    // The services' summaries: web has one instance, on the agent's node.
    let summaries = client
        .ui_services_fold(&QueryOptions::default(), Vec::new(), |seen, summary| {
            seen.push((
                summary.name.into_owned(),
                summary.instance_count,
                summary.nodes.len(),
                summary.checks_critical,
            ));
        })
        .await
        .expect("summaries")
        .value;
    assert!(
        summaries.contains(&("web".to_owned(), 1, 1, 1)),
        "{summaries:?}"
    );

    client
        .agent_check_pass("web-1:ttl", "ok")
        .await
        .expect("pass");
    client
        .agent_service_maintenance(
            "web-1",
            &Maintenance::Enable {
                reason: Some("deploying v2".to_owned()),
            },
        )
        .await
        .expect("maintenance on");
    let entry = &health(&client, "web", HealthFilter::All).await[0];
    assert!(entry.in_maintenance());
    assert_eq!(entry.status(), CheckStatus::Critical);
    assert!(
        entry
            .checks
            .iter()
            .any(|c| c.is_maintenance() && c.notes == "deploying v2")
    );
    client
        .agent_service_maintenance("web-1", &Maintenance::Disable)
        .await
        .expect("maintenance off");
    let entry = &health(&client, "web", HealthFilter::All).await[0];
    assert!(!entry.in_maintenance());
    assert_eq!(entry.status(), CheckStatus::Passing);

    let services = client
        .catalog_services(&QueryOptions::default())
        .await
        .expect("catalog")
        .value;
    assert_eq!(services["web"], ["v1"]);

    client
        .agent_service_deregister("web-1")
        .await
        .expect("deregistered");
    assert!(health(&client, "web", HealthFilter::All).await.is_empty());
}

#[tokio::test]
async fn catalog_registration_of_an_external_service() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    client
        .catalog_register(&CatalogRegistration {
            node: "ext-1".to_owned(),
            address: "192.0.2.10".to_owned(),
            tagged_addresses: BTreeMap::from([("wan".to_owned(), "198.51.100.10".to_owned())]),
            node_meta: BTreeMap::from([("zone".to_owned(), "z1".to_owned())]),
            service: Some(CatalogService {
                id: "db-1".to_owned(),
                service: "db".to_owned(),
                tags: vec!["primary".to_owned()],
                port: 5432,
                ..CatalogService::default()
            }),
            check: Some(CatalogCheck {
                check_id: "db-1:alive".to_owned(),
                name: "alive".to_owned(),
                status: CheckStatus::Passing,
                service_id: "db-1".to_owned(),
                output: "external probe".to_owned(),
            }),
            ..CatalogRegistration::default()
        })
        .await
        .expect("registered");

    let entries = health(&client, "db", HealthFilter::PassingOnly).await;
    assert_eq!(ids(&entries), ["db-1"]);
    let entry = &entries[0];
    assert_eq!(entry.node.node, "ext-1");
    assert_eq!(entry.node.meta["zone"], "z1");
    assert_eq!(entry.node.tagged_addresses["wan"], "198.51.100.10");
    assert_eq!(
        entry.address(),
        "192.0.2.10",
        "no service address: the node's"
    );
    assert_eq!(entry.service.port, 5432);
    let services = client
        .catalog_services(&QueryOptions::default())
        .await
        .expect("catalog")
        .value;
    assert_eq!(services["db"], ["primary"]);

    client
        .catalog_deregister(&CatalogDeregistration {
            node: "ext-1".to_owned(),
            ..CatalogDeregistration::default()
        })
        .await
        .expect("deregistered");
    assert!(health(&client, "db", HealthFilter::All).await.is_empty());
}

#[tokio::test]
async fn kv_values_are_raw_bytes_and_cas_conflicts_are_reported() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let none = QueryOptions::default();
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255, b'\n']);

    client
        .kv_put("app/blob", binary.clone())
        .await
        .expect("put");
    let pair = client
        .kv_get("app/blob", &none)
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(pair.value, Some(binary));
    assert_eq!(pair.key, "app/blob");

    let odd_key = "app/with space/é?#";
    assert!(
        client
            .kv_write(
                odd_key,
                "x",
                &KvWrite {
                    flags: Some(42),
                    condition: KvCondition::Always
                }
            )
            .await
            .expect("put")
    );
    let odd = client
        .kv_get(odd_key, &none)
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(odd.key, odd_key);
    assert_eq!(odd.flags, 42);

    let missing = client
        .kv_get("app/missing", &none)
        .await
        .expect("404 is an answer");
    assert_eq!(missing.value, None);
    assert!(
        missing.meta.index.is_some(),
        "a missing key still has an index"
    );

    // Check-and-set: a stale index loses, reported as `false`.
    let index = pair.modify_index;
    assert!(
        client
            .kv_put_cas("app/blob", "v2", index)
            .await
            .expect("cas")
    );
    assert!(
        !client
            .kv_put_cas("app/blob", "v3", index)
            .await
            .expect("cas"),
        "a stale index is a conflict"
    );
    let current = client
        .kv_get("app/blob", &none)
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(
        current.value.as_deref(),
        Some(&b"v2"[..]),
        "the loser wrote nothing"
    );
    assert!(
        !client.kv_put_cas("app/blob", "v4", 0).await.expect("cas"),
        "0: only if absent"
    );
    assert!(client.kv_put_cas("app/new", "n", 0).await.expect("cas"));

    let listed = client.kv_list("app/", &none).await.expect("list").value;
    assert_eq!(
        listed.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["app/blob", "app/new", odd_key]
    );

    assert!(
        !client
            .kv_delete_cas("app/blob", index)
            .await
            .expect("delete-cas")
    );
    assert!(
        client
            .kv_delete_cas("app/blob", current.modify_index)
            .await
            .expect("delete-cas")
    );
    client.kv_delete("app/new").await.expect("delete");
    client
        .kv_delete("app/never-existed")
        .await
        .expect("deleting nothing succeeds");
    assert_eq!(
        client
            .kv_list("app/", &none)
            .await
            .expect("list")
            .value
            .len(),
        1
    );
    client.kv_delete_tree("app/").await.expect("delete tree");
    assert!(
        client
            .kv_list("app/", &none)
            .await
            .expect("list")
            .value
            .is_empty()
    );
}

#[tokio::test]
async fn sessions_are_created_renewed_and_destroyed() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let id = client
        .session_create(&SessionRequest {
            name: Some("renewer".to_owned()),
            ttl: Some(Duration::from_secs(10)),
            lock_delay: Some(Duration::from_secs(1)),
            behavior: SessionBehavior::Delete,
            checks: Some(Vec::new()),
            ..SessionRequest::default()
        })
        .await
        .expect("created");

    let info = client
        .session_info(&id, &QueryOptions::default())
        .await
        .expect("info")
        .value
        .expect("exists");
    assert_eq!(info.id, id);
    assert_eq!(info.name, "renewer");
    assert_eq!(info.behavior, SessionBehavior::Delete);
    assert_eq!(info.ttl, "10s");
    assert_eq!(info.lock_delay, Duration::from_secs(1));
    assert!(info.checks.is_empty());

    let renewed = client
        .session_renew(&id)
        .await
        .expect("renew")
        .expect("alive");
    assert_eq!(renewed.id, id);

    // Behavior=delete: the session's locked keys go with it.
    assert!(client.kv_acquire("owned", "x", &id).await.expect("acquire"));
    client.session_destroy(&id).await.expect("destroyed");
    assert_eq!(client.session_renew(&id).await.expect("renew"), None);
    assert_eq!(
        client
            .session_info(&id, &QueryOptions::default())
            .await
            .expect("info")
            .value,
        None
    );
    assert_eq!(
        client
            .kv_get("owned", &QueryOptions::default())
            .await
            .expect("get")
            .value,
        None
    );
}

#[tokio::test]
async fn a_lock_is_exclusive_between_two_sessions() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let a = ttl_session(&client, "a").await;
    let b = ttl_session(&client, "b").await;
    let lock_a = Lock::new(client.clone(), "locks/leader", a.clone(), "a");
    let lock_b = Lock::new(client.clone(), "locks/leader", b.clone(), "b");

    lock_a.acquire().await.expect("a acquires the free lock");
    assert!(lock_a.is_held().await.expect("read"));
    assert!(!lock_b.try_acquire().await.expect("attempt"), "held by a");
    assert!(!lock_b.is_held().await.expect("read"));
    assert!(
        !lock_b.release().await.expect("release"),
        "b cannot release a's lock"
    );
    assert!(lock_a.is_held().await.expect("read"), "still a's");

    let waiting = tokio::spawn({
        let lock_b = lock_b.clone();
        async move { lock_b.acquire().await }
    });
    // b waits as long as a holds the lock (a slower machine only makes this
    // more certain: nothing releases it meanwhile).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b acquired a held lock");

    assert!(lock_a.release().await.expect("release"));
    tokio::time::timeout(HANG_GUARD, waiting)
        .await
        .expect("b acquires once a releases")
        .expect("joined")
        .expect("acquired");
    let pair = client
        .kv_get("locks/leader", &QueryOptions::default())
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(pair.session.as_ref(), Some(&b));
    assert_eq!(pair.value.as_deref(), Some(&b"b"[..]));
    assert!(
        !lock_a.try_acquire().await.expect("attempt"),
        "now held by b"
    );
}

#[tokio::test]
async fn txn_with_check_session_fences_a_former_lock_holder() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let none = QueryOptions::default();
    let a = ttl_session(&client, "a").await;
    let b = ttl_session(&client, "b").await;
    assert!(
        client
            .kv_acquire("locks/acme", "a", &a)
            .await
            .expect("acquire")
    );

    let fenced_write = |session: &SessionId, value: &'static str| {
        vec![
            TxnOp::KvCheckSession {
                key: "locks/acme".to_owned(),
                session: session.clone(),
            },
            TxnOp::KvSet {
                key: "certs/example.org".to_owned(),
                value: Bytes::from_static(value.as_bytes()),
                flags: 0,
            },
            TxnOp::KvGet {
                key: "certs/example.org".to_owned(),
            },
        ]
    };
    match client
        .txn(&fenced_write(&a, "from a"), &none)
        .await
        .expect("txn")
    {
        TxnOutcome::Committed(results) => {
            let read = results.last().expect("the get's result");
            assert_eq!(read.key, "certs/example.org");
            assert_eq!(read.value.as_deref(), Some(&b"from a"[..]));
        }
        other => panic!("the holder's write must commit: {other:?}"),
    }

    // The lock moves to b; a's fenced write is now refused as a whole.
    assert!(
        client
            .kv_release("locks/acme", "", &a)
            .await
            .expect("release")
    );
    assert!(
        client
            .kv_acquire("locks/acme", "b", &b)
            .await
            .expect("acquire")
    );
    match client
        .txn(&fenced_write(&a, "stale a"), &none)
        .await
        .expect("txn")
    {
        TxnOutcome::RolledBack(errors) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].op_index, 0);
            assert!(errors[0].what.contains("session"), "{}", errors[0].what);
        }
        other => panic!("a former holder must be fenced off: {other:?}"),
    }
    let current = client
        .kv_get("certs/example.org", &none)
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(
        current.value.as_deref(),
        Some(&b"from a"[..]),
        "nothing applied"
    );

    // Other verbs: a CAS conflict and a check-not-exists also roll back.
    let outcome = client
        .txn(
            &[
                TxnOp::KvCas {
                    key: "certs/example.org".to_owned(),
                    value: Bytes::from_static(b"x"),
                    flags: 0,
                    index: current.modify_index + 1000,
                },
                TxnOp::KvCheckNotExists {
                    key: "certs/example.org".to_owned(),
                },
            ],
            &none,
        )
        .await
        .expect("txn");
    match outcome {
        TxnOutcome::RolledBack(errors) => {
            let failed: Vec<usize> = errors.iter().map(|e| e.op_index).collect();
            assert_eq!(failed, [0, 1], "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    let committed = client
        .txn(
            &[
                TxnOp::KvCheckIndex {
                    key: "certs/example.org".to_owned(),
                    index: current.modify_index,
                },
                TxnOp::KvDeleteCas {
                    key: "certs/example.org".to_owned(),
                    index: current.modify_index,
                },
                TxnOp::KvGetTree {
                    prefix: "locks/".to_owned(),
                },
            ],
            &none,
        )
        .await
        .expect("txn");
    match committed {
        TxnOutcome::Committed(results) => {
            assert!(
                results
                    .iter()
                    .any(|p| p.key == "locks/acme" && p.session.as_ref() == Some(&b))
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client
            .kv_get("certs/example.org", &none)
            .await
            .expect("get")
            .value,
        None
    );
}

/// The watch's latency requirement: an instance registered through the
/// agent is seen by a watch within 100 ms of the registration returning.
#[tokio::test]
async fn a_watch_sees_a_registration_within_100ms() {
    const RUNS: usize = 7;
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let mut watch =
        client.watch_health_service("latency", HealthFilter::All, WatchConfig::default());
    match next(&mut watch).await {
        WatchEvent::Value {
            value,
            continuity: Continuity::Initial,
            ..
        } => assert!(value.is_empty()),
        other => panic!("expected the initial (empty) state, got {other:?}"),
    }

    let mut latencies = Vec::new();
    for run in 0..RUNS {
        // A quiet period first, as in production: the watch is parked in a
        // blocking query when the change comes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let id = format!("latency-{run}");
        client
            .agent_service_register(&AgentServiceRegistration {
                id: Some(id.clone()),
                name: "latency".to_owned(),
                port: 9000 + u16::try_from(run).expect("small"),
                ..AgentServiceRegistration::default()
            })
            .await
            .expect("registered");
        let registered = Instant::now();
        loop {
            match next(&mut watch).await {
                WatchEvent::Value {
                    value,
                    continuity: Continuity::Advanced,
                    ..
                } if ids(&value).contains(&id.as_str()) => break,
                WatchEvent::Value {
                    continuity: Continuity::Advanced,
                    ..
                } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        latencies.push(registered.elapsed());
    }
    latencies.sort();
    let median = latencies[RUNS / 2];
    println!(
        "registration -> watch event: min {:?}, median {median:?}, max {:?} ({RUNS} runs)",
        latencies[0],
        latencies[RUNS - 1]
    );
    assert!(
        median < Duration::from_millis(100),
        "median latency {median:?} (all: {latencies:?})"
    );
}

/// A dev agent restarted keeps nothing: indexes start low again. The watch
/// must report the outage, keep the last value meanwhile, and then follow
/// the new agent instead of blocking on an index it will not reach.
#[tokio::test]
async fn a_watch_follows_an_agent_that_restarted_with_lower_indexes() {
    let mut consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let register = |name: &'static str| {
        let client = client.clone();
        async move {
            client
                .catalog_register(&CatalogRegistration {
                    node: "ext".to_owned(),
                    address: "192.0.2.1".to_owned(),
                    service: Some(CatalogService {
                        id: name.to_owned(),
                        service: name.to_owned(),
                        port: 80,
                        ..CatalogService::default()
                    }),
                    ..CatalogRegistration::default()
                })
                .await
                .expect("registered")
        }
    };
    // Push the index up so the restarted agent's is surely lower.
    for i in 0..20 {
        client
            .kv_put(&format!("filler/{i}"), "x")
            .await
            .expect("put");
    }
    register("before").await;
    let config = WatchConfig {
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..WatchConfig::default()
    };
    let mut events = drive(client.watch_catalog_services(config));
    let old_index = match received(&mut events).await {
        WatchEvent::Value {
            value,
            index,
            continuity: Continuity::Initial,
            ..
        } => {
            assert!(value.contains_key("before"));
            index
        }
        other => panic!("expected the first value, got {other:?}"),
    };

    // Restart while the watch is parked in its blocking query, as happens in
    // production (a query is in flight nearly all the time).
    test_support::eventually(
        "the watch's blocking query in flight",
        HANG_GUARD,
        Duration::from_millis(10),
        || async {
            (client.metrics().requests_in_flight(RequestClass::Blocking) == 1).then_some(())
        },
    )
    .await
    .expect("the watch blocks");
    consul.restart().await.expect("consul restarts");
    let mut degraded = 0;
    let new_index = loop {
        match received(&mut events).await {
            WatchEvent::Degraded { last_good, .. } => {
                degraded += 1;
                let last_good = last_good.expect("kept");
                assert!(
                    last_good.contains_key("before"),
                    "the last good value is kept"
                );
            }
            WatchEvent::Value {
                value,
                index,
                continuity: Continuity::Recovered { index_moved },
                ..
            } => {
                assert!(index_moved);
                assert!(
                    !value.contains_key("before"),
                    "the new agent's state: {value:?}"
                );
                break index;
            }
            // Without a failure in between, the lower index is a reset.
            WatchEvent::Value { value, index, .. } => {
                assert!(!value.contains_key("before"));
                break index;
            }
        }
    };
    assert!(degraded >= 1, "the outage was reported");
    assert!(new_index < old_index, "{new_index} >= {old_index}");

    register("after").await;
    loop {
        match received(&mut events).await {
            WatchEvent::Value {
                value,
                continuity: Continuity::Advanced | Continuity::Reset,
                ..
            } if value.contains_key("after") => break,
            WatchEvent::Value {
                continuity: Continuity::Advanced | Continuity::Reset,
                ..
            } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn acl_denials_are_distinct_and_the_token_is_honoured() {
    let master = "8f246b77-f3e1-ff88-5b48-8ec93abf3e05";
    let consul = ConsulAgent::start_with(ConsulOptions {
        acl_master_token: Some(master.to_owned()),
        ..ConsulOptions::default()
    })
    .await
    .expect("consul starts");
    let anonymous = client_for(&consul);
    let error = anonymous.kv_put("secret", "x").await.expect_err("denied");
    assert!(
        matches!(&error, Error::PermissionDenied { endpoint, .. } if endpoint == "PUT /v1/kv/secret"),
        "{error:?}"
    );
    assert!(matches!(
        anonymous.agent_self().await,
        Err(Error::PermissionDenied { .. })
    ));

    let privileged = Client::new(ClientConfig {
        token: Some(Token::new(master).expect("valid token")),
        ..ClientConfig::new(consul.http_url().parse().expect("valid address"))
    })
    .expect("valid config");
    privileged.kv_put("secret", "x").await.expect("allowed");
    assert_eq!(
        privileged.agent_self().await.expect("allowed").datacenter,
        "dc1"
    );
}

#[tokio::test]
async fn kv_and_health_state_watches_follow_changes() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);

    let mut key = client.watch_kv("config/flag", WatchConfig::default());
    match next(&mut key).await {
        WatchEvent::Value {
            value,
            continuity: Continuity::Initial,
            ..
        } => assert_eq!(*value, None, "absent at first"),
        other => panic!("{other:?}"),
    }
    client.kv_put("config/flag", "on").await.expect("put");
    match next(&mut key).await {
        WatchEvent::Value {
            value,
            continuity: Continuity::Advanced,
            ..
        } => {
            let pair = value.as_ref().as_ref().expect("present now");
            assert_eq!(pair.value.as_deref(), Some(&b"on"[..]));
        }
        other => panic!("{other:?}"),
    }

    let mut prefix = client.watch_kv_prefix("config/", WatchConfig::default());
    assert!(
        matches!(next(&mut prefix).await, WatchEvent::Value { value, continuity: Continuity::Initial, .. } if value.len() == 1)
    );
    client.kv_put("config/other", "x").await.expect("put");
    assert!(
        matches!(next(&mut prefix).await, WatchEvent::Value { value, continuity: Continuity::Advanced, .. } if value.len() == 2)
    );

    let mut critical = client.watch_health_state(HealthState::Critical, WatchConfig::default());
    match next(&mut critical).await {
        WatchEvent::Value {
            value,
            continuity: Continuity::Initial,
            ..
        } => assert!(value.is_empty(), "{value:?}"),
        other => panic!("{other:?}"),
    }
    client
        .agent_service_register(&AgentServiceRegistration {
            id: Some("api-1".to_owned()),
            name: "api".to_owned(),
            port: 7000,
            checks: vec![AgentCheck::ttl("alive", Duration::from_secs(60)).with_id("api-1:ttl")],
            ..AgentServiceRegistration::default()
        })
        .await
        .expect("registered");
    loop {
        match next(&mut critical).await {
            WatchEvent::Value {
                value,
                continuity: Continuity::Advanced,
                ..
            } if value.iter().any(|c| c.check_id == "api-1:ttl") => {
                break;
            }
            WatchEvent::Value {
                continuity: Continuity::Advanced,
                ..
            } => continue,
            other => panic!("{other:?}"),
        }
    }
    let mut checks = client.watch_health_checks("api", WatchConfig::default());
    assert!(matches!(
        next(&mut checks).await,
        WatchEvent::Value { value, continuity: Continuity::Initial, .. }
            if value.len() == 1 && value[0].status == CheckStatus::Critical
    ));
    client
        .agent_check_pass("api-1:ttl", "ok")
        .await
        .expect("pass");
    loop {
        match next(&mut checks).await {
            WatchEvent::Value {
                value,
                continuity: Continuity::Advanced,
                ..
            } if value[0].status == CheckStatus::Passing => break,
            WatchEvent::Value {
                continuity: Continuity::Advanced,
                ..
            } => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_lock_passes_on_after_its_holders_session_is_invalidated() {
    let consul = ConsulAgent::start().await.expect("consul starts");
    let client = client_for(&consul);
    let holder = client
        .session_create(&SessionRequest {
            name: Some("holder".to_owned()),
            ttl: Some(Duration::from_secs(30)),
            lock_delay: Some(Duration::from_secs(1)),
            checks: Some(Vec::new()),
            ..SessionRequest::default()
        })
        .await
        .expect("session");
    let successor = ttl_session(&client, "successor").await;
    let lock_holder = Lock::new(client.clone(), "locks/acme", holder.clone(), "holder");
    let lock_successor = Lock::new(client.clone(), "locks/acme", successor.clone(), "successor")
        .with_retry_interval(Duration::from_millis(100));
    lock_holder.acquire().await.expect("acquired");

    // The holder's session dies (as when its process does): Consul releases
    // the key, and the successor gets it once the lock delay has passed.
    client.session_destroy(&holder).await.expect("destroyed");
    tokio::time::timeout(HANG_GUARD, lock_successor.acquire())
        .await
        .expect("acquired after the lock delay")
        .expect("acquired");
    assert!(lock_successor.is_held().await.expect("read"));
    assert!(!lock_holder.is_held().await.expect("read"));
}
