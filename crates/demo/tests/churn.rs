//! Churn keeps the instance count within bounds, announces every change,
//! and a removed instance keeps answering while it drains.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use demo::backend::{Behaviour, Instance};
use demo::churn::{ChurnPlan, Churner, Registrar};

#[derive(Default)]
struct Recording {
    registered: BTreeSet<SocketAddr>,
    events: usize,
}

impl Registrar for Recording {
    type Error = Infallible;

    async fn register(&mut self, instance: &Instance) -> Result<(), Infallible> {
        self.registered.insert(instance.addr);
        self.events += 1;
        Ok(())
    }

    async fn deregister(&mut self, instance: &Instance) -> Result<(), Infallible> {
        self.registered.remove(&instance.addr);
        self.events += 1;
        Ok(())
    }
}

#[tokio::test]
async fn churn_stays_in_bounds_and_drains_removed_instances() {
    let plan = ChurnPlan {
        id_prefix: "web".to_owned(),
        ip: "127.0.0.1".parse().expect("ip"),
        min_instances: 2,
        max_instances: 4,
        behaviour: Behaviour::default(),
        drain: Duration::from_millis(300),
    };
    let mut churner = Churner::new(plan, Recording::default());
    churner.start().await.expect("start");
    assert_eq!(churner.live().len(), 2);
    let mut removed_addr = None;
    for _ in 0..20 {
        let before: BTreeSet<SocketAddr> = churner.live().iter().map(|i| i.addr).collect();
        churner.step().await.expect("step");
        let after: BTreeSet<SocketAddr> = churner.live().iter().map(|i| i.addr).collect();
        assert!((2..=4).contains(&after.len()), "{} instances", after.len());
        assert_eq!(
            after,
            churner.registrar_mut().registered,
            "registrar out of sync"
        );
        if removed_addr.is_none() {
            removed_addr = before.difference(&after).next().copied();
        }
    }
    assert_eq!(churner.registrar_mut().events, 22, "2 starts + 20 steps");
    // Removed instances drain for 300 ms, then stop.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let removed = removed_addr.expect("20 steps removed at least one instance");
    assert!(
        tokio::net::TcpStream::connect(removed).await.is_err(),
        "a drained instance still accepts connections"
    );
    churner.shutdown().await;
}
