//! The health policy: how Consul's check states become Envoy endpoint health.
//!
//! It follows Consul's own xDS server: passing is healthy, critical is
//! removed, maintenance drains. Warning is healthy by default (Consul's
//! `Weights.Warning` then decides the share), and operators can choose to
//! mark it degraded or leave such instances out.

use std::sync::Arc;

use clap::ValueEnum;

use crate::model::{CheckState, Endpoint, EndpointHealth, ServiceInstance};

/// What to do with instances whose worst check is `warning`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum WarningPolicy {
    /// Serve them as healthy, weighted by `Weights.Warning`.
    #[default]
    Healthy,
    /// Serve them as DEGRADED: Envoy uses them only when too few are healthy.
    Degraded,
    /// Leave them out.
    Exclude,
}

/// What to do with instances whose worst check is `critical`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum CriticalPolicy {
    /// Leave them out (Consul's behaviour).
    #[default]
    Remove,
    /// Serve them as UNHEALTHY, so Envoy's panic threshold can still use them.
    Unhealthy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthPolicy {
    pub warning: WarningPolicy,
    pub critical: CriticalPolicy,
}

impl HealthPolicy {
    /// The endpoint Envoy gets for `instance`, or why it is left out.
    pub fn endpoint(
        &self,
        instance: &ServiceInstance,
        priority: u32,
    ) -> Result<Endpoint, &'static str> {
        let (health, weight, reason) = if instance.maintenance {
            // Checked first: an instance in maintenance usually also has a
            // critical maintenance check, and draining is what lets Envoy
            // finish in-flight requests during a deploy.
            (
                EndpointHealth::Draining,
                instance.weights.passing,
                "maintenance mode",
            )
        } else {
            match instance.checks {
                CheckState::Passing => {
                    if instance.weights.passing == 0 {
                        return Err("Weights.Passing is 0");
                    }
                    (
                        EndpointHealth::Healthy,
                        instance.weights.passing,
                        "checks passing",
                    )
                }
                CheckState::Warning => match self.warning {
                    WarningPolicy::Exclude => return Err("check warning (--warning exclude)"),
                    // Consul's Weights.Warning = 0 means "send nothing".
                    _ if instance.weights.warning == 0 => {
                        return Err("check warning and Weights.Warning is 0");
                    }
                    WarningPolicy::Healthy => (
                        EndpointHealth::Healthy,
                        instance.weights.warning,
                        "check warning, served as healthy with the warning weight",
                    ),
                    WarningPolicy::Degraded => (
                        EndpointHealth::Degraded,
                        instance.weights.warning,
                        "check warning, served as degraded",
                    ),
                },
                CheckState::Critical => match self.critical {
                    CriticalPolicy::Remove => return Err("check critical"),
                    CriticalPolicy::Unhealthy => (
                        EndpointHealth::Unhealthy,
                        instance.weights.passing,
                        "check critical, served as unhealthy",
                    ),
                },
            }
        };
        Ok(Endpoint {
            instance_id: Arc::clone(&instance.id),
            node: Arc::clone(&instance.node),
            address: Arc::clone(&instance.address),
            port: instance.port,
            health,
            weight: weight.max(1),
            locality: Arc::clone(&instance.locality),
            priority,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Weights;

    fn instance(checks: CheckState) -> ServiceInstance {
        ServiceInstance {
            id: "web-1".into(),
            node: "node-a".into(),
            address: "10.0.0.1".into(),
            address_is_ip: true,
            port: 8080,
            checks,
            maintenance: false,
            weights: Weights {
                passing: 10,
                warning: 2,
            },
            tags: vec![],
            locality: Arc::default(),
            source: crate::model::SourceKind::Consul,
        }
    }

    #[test]
    fn passing_is_healthy_with_the_passing_weight() {
        let endpoint = HealthPolicy::default()
            .endpoint(&instance(CheckState::Passing), 0)
            .expect("served");
        assert_eq!(endpoint.health, EndpointHealth::Healthy);
        assert_eq!(endpoint.weight, 10);
    }

    #[test]
    fn warning_uses_the_warning_weight_by_default() {
        let endpoint = HealthPolicy::default()
            .endpoint(&instance(CheckState::Warning), 0)
            .expect("served");
        assert_eq!(endpoint.health, EndpointHealth::Healthy);
        assert_eq!(endpoint.weight, 2);
    }

    #[test]
    fn warning_can_be_degraded_or_excluded() {
        let degraded = HealthPolicy {
            warning: WarningPolicy::Degraded,
            ..Default::default()
        };
        assert_eq!(
            degraded
                .endpoint(&instance(CheckState::Warning), 0)
                .map(|e| e.health),
            Ok(EndpointHealth::Degraded)
        );
        let exclude = HealthPolicy {
            warning: WarningPolicy::Exclude,
            ..Default::default()
        };
        assert!(exclude.endpoint(&instance(CheckState::Warning), 0).is_err());
    }

    #[test]
    fn critical_is_removed_unless_asked_to_serve_it_unhealthy() {
        assert_eq!(
            HealthPolicy::default().endpoint(&instance(CheckState::Critical), 0),
            Err("check critical")
        );
        let unhealthy = HealthPolicy {
            critical: CriticalPolicy::Unhealthy,
            ..Default::default()
        };
        assert_eq!(
            unhealthy
                .endpoint(&instance(CheckState::Critical), 0)
                .map(|e| e.health),
            Ok(EndpointHealth::Unhealthy)
        );
    }

    #[test]
    fn maintenance_drains_even_when_checks_are_critical() {
        let mut in_maintenance = instance(CheckState::Critical);
        in_maintenance.maintenance = true;
        let endpoint = HealthPolicy::default()
            .endpoint(&in_maintenance, 0)
            .expect("served while draining");
        assert_eq!(endpoint.health, EndpointHealth::Draining);
    }

    #[test]
    fn zero_weights_mean_no_traffic_and_never_a_zero_weight_endpoint() {
        let mut no_warning_traffic = instance(CheckState::Warning);
        no_warning_traffic.weights.warning = 0;
        assert_eq!(
            HealthPolicy::default().endpoint(&no_warning_traffic, 0),
            Err("check warning and Weights.Warning is 0")
        );
        let mut no_passing_traffic = instance(CheckState::Passing);
        no_passing_traffic.weights.passing = 0;
        assert_eq!(
            HealthPolicy::default().endpoint(&no_passing_traffic, 0),
            Err("Weights.Passing is 0")
        );
        let mut draining = instance(CheckState::Passing);
        draining.maintenance = true;
        draining.weights.passing = 0;
        assert_eq!(
            HealthPolicy::default()
                .endpoint(&draining, 0)
                .map(|e| e.weight),
            Ok(1)
        );
    }
}
