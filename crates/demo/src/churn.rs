//! Backend churn: one instance added or removed per step, as during a deploy.
//!
//! Where instances are announced is a [`Registrar`]: Consul for the demo and
//! the EDS tests, an nginx config file plus reload for the baseline benchmark.
//! Removal is graceful the way a well-behaved deploy is: deregister first,
//! keep serving while the gateway catches up, then stop.

use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;

use crate::backend::{Behaviour, Instance};

/// Announces instances to whatever routes traffic to them.
pub trait Registrar: Send {
    type Error: std::fmt::Display;

    fn register(
        &mut self,
        instance: &Instance,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    fn deregister(
        &mut self,
        instance: &Instance,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

#[derive(Debug, Clone)]
pub struct ChurnPlan {
    /// Instance ids are `<prefix>-<n>`.
    pub id_prefix: String,
    pub ip: IpAddr,
    pub min_instances: usize,
    pub max_instances: usize,
    pub behaviour: Behaviour,
    /// How long a deregistered instance keeps serving before it stops.
    pub drain: Duration,
}

/// The running set of instances.
#[derive(Debug)]
pub struct Churner<R> {
    plan: ChurnPlan,
    registrar: R,
    live: Vec<Instance>,
    next_id: u64,
    /// Instances deregistered and draining, stopped in the background.
    draining: tokio::task::JoinSet<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    #[error("starting instance {id}: {source}")]
    Start {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("registering instance {id}: {reason}")]
    Register { id: String, reason: String },
    #[error("deregistering instance {id}: {reason}")]
    Deregister { id: String, reason: String },
}

impl<R: Registrar> Churner<R> {
    pub fn new(plan: ChurnPlan, registrar: R) -> Self {
        Self {
            plan,
            registrar,
            live: Vec::new(),
            next_id: 1,
            draining: tokio::task::JoinSet::new(),
        }
    }

    /// Starts `min_instances` instances.
    pub async fn start(&mut self) -> Result<(), ChurnError> {
        while self.live.len() < self.plan.min_instances.max(1) {
            self.add().await?;
        }
        Ok(())
    }

    /// One churn step: add an instance or remove one, at random within the bounds.
    pub async fn step(&mut self) -> Result<(), ChurnError> {
        let can_add = self.live.len() < self.plan.max_instances;
        let can_remove = self.live.len() > self.plan.min_instances.max(1);
        let add = match (can_add, can_remove) {
            (true, true) => rand::rng().random_bool(0.5),
            (add, _) => add,
        };
        if add {
            self.add().await
        } else {
            self.remove_one().await
        }
    }

    pub async fn add(&mut self) -> Result<(), ChurnError> {
        let id = format!("{}-{}", self.plan.id_prefix, self.next_id);
        self.next_id += 1;
        let instance = Instance::start(id.clone(), self.plan.ip, self.plan.behaviour)
            .await
            .map_err(|source| ChurnError::Start {
                id: id.clone(),
                source,
            })?;
        self.registrar
            .register(&instance)
            .await
            .map_err(|e| ChurnError::Register {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        self.live.push(instance);
        Ok(())
    }

    async fn remove_one(&mut self) -> Result<(), ChurnError> {
        if self.live.is_empty() {
            return Ok(());
        }
        let index = rand::rng().random_range(0..self.live.len());
        let instance = self.live.swap_remove(index);
        self.registrar
            .deregister(&instance)
            .await
            .map_err(|e| ChurnError::Deregister {
                id: instance.id.clone(),
                reason: e.to_string(),
            })?;
        let drain = self.plan.drain;
        self.draining.spawn(async move {
            tokio::time::sleep(drain).await;
            instance.stop(Duration::from_secs(5)).await;
        });
        Ok(())
    }

    pub fn live(&self) -> &[Instance] {
        &self.live
    }

    pub fn registrar_mut(&mut self) -> &mut R {
        &mut self.registrar
    }

    /// Deregisters and stops every instance.
    pub async fn shutdown(mut self) {
        for instance in std::mem::take(&mut self.live) {
            if let Err(error) = self.registrar.deregister(&instance).await {
                tracing::warn!(id = %instance.id, %error, "deregistering at shutdown failed");
            }
            instance.stop(Duration::from_secs(2)).await;
        }
        while self.draining.join_next().await.is_some() {}
    }
}
