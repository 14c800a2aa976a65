//! Announces demo instances in Consul, the way a Nomad task's service does.

use std::time::Duration;

use consul_client::{AgentCheck, AgentServiceRegistration, CheckStatus, Client};

use crate::backend::Instance;
use crate::churn::Registrar;

/// Registers each instance on the local agent with an HTTP health check.
#[derive(Debug, Clone)]
pub struct ConsulRegistrar {
    client: Client,
    service: String,
    tags: Vec<String>,
    check_interval: Duration,
}

impl ConsulRegistrar {
    pub fn new(client: Client, service: impl Into<String>) -> Self {
        Self {
            client,
            service: service.into(),
            tags: Vec::new(),
            check_interval: Duration::from_secs(1),
        }
    }

    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }
}

impl Registrar for ConsulRegistrar {
    type Error = consul_client::Error;

    async fn register(&mut self, instance: &Instance) -> Result<(), Self::Error> {
        let health_url = format!("http://{}/health", instance.addr);
        let registration = AgentServiceRegistration {
            id: Some(instance.id.clone()),
            name: self.service.clone(),
            tags: self.tags.clone(),
            address: instance.addr.ip().to_string(),
            port: instance.addr.port(),
            checks: vec![
                AgentCheck::http("http", health_url, self.check_interval)
                    // The instance listens before it is registered, so it
                    // starts passing rather than Consul's default critical.
                    .with_initial_status(CheckStatus::Passing),
            ],
            ..AgentServiceRegistration::default()
        };
        self.client.agent_service_register(&registration).await
    }

    async fn deregister(&mut self, instance: &Instance) -> Result<(), Self::Error> {
        self.client.agent_service_deregister(&instance.id).await
    }
}
