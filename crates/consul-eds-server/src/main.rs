//! `consul-eds-server`: Consul's catalog and health -> Envoy EDS.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use consul_client::watch::WatchEvent;
use consul_client::{Client, ClientMetrics, WatchConfig};
use consul_eds_server::admin::EdsAdmin;
use consul_eds_server::config::Config;
use consul_eds_server::engine::{Engine, EngineSettings, GatewayLink, SourceSelection};
use consul_eds_server::gateway::actor::{CatalogEvent, Gateway, GatewaySettings};
use consul_eds_server::gateway::publish::Publisher;
use consul_eds_server::gateway::translate::TranslateSettings;
use consul_eds_server::gateway::view::{GatewayMetrics, GatewayView};
use consul_eds_server::metrics::EngineMetrics;
use consul_eds_server::naming::ClusterNaming;
use consul_eds_server::sink::{CacheSink, SHARED_NODE_KEY};
use consul_eds_server::source::{ConsulSource, EntryReader};
use consul_eds_server::state::ServedState;
use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus_client::registry::Registry;
use service_support::admin::AdminServer;
use service_support::{logging, shutdown};
use tokio::sync::{mpsc, watch};
use xds_core::{ResourceType, ServerOptions, SharedKey, SnapshotCache, XdsServer};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    logging::init(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<()> {
    config.gateway.validate()?;
    let mut registry = Registry::default();
    let client = consul_client(&config, &mut registry)?;
    let naming = ClusterNaming::new(&config.cluster_name_template)?;

    // Every Envoy shares one snapshot: endpoints do not depend on who asks.
    let cache = SnapshotCache::new(SharedKey(SHARED_NODE_KEY.to_owned()));
    let xds_metrics = xds_core::Metrics::default();
    xds_metrics.register(&mut registry);
    let server = XdsServer::new(cache.clone())
        .with_metrics(xds_metrics)
        .with_options(ServerOptions {
            drain_timeout: config.shutdown_grace,
            tls: config.xds.tls_options()?,
            ..ServerOptions::default()
        });
    let demand = server.subscriptions().watch(ResourceType::Endpoint);
    let clients = server.clients();

    let state = ServedState::default();
    let engine_metrics = EngineMetrics::default();
    engine_metrics.register(&mut registry);
    let watch_config = WatchConfig {
        datacenter: config.datacenter.clone(),
        stale: config.stale,
        ..WatchConfig::default()
    };
    let source = ConsulSource::new(
        client.clone(),
        EntryReader::new(config.address, config.zone_meta_key.clone()),
        watch_config.clone(),
        config.per_service_watch_limit(),
        config.dc_wide_sweep,
    );
    let engine = Engine::new(
        EngineSettings {
            naming,
            policy: config.health_policy(),
            failover_dcs: config.failover_dcs.clone(),
            sources: SourceSelection::default(),
            allowed_services: config.services.iter().cloned().collect::<BTreeSet<_>>(),
            coalesce: config.coalesce,
            reset_grace: config.reset_grace,
        },
        Arc::new(source),
        CacheSink::new(cache.clone()),
        state.clone(),
        engine_metrics,
    );

    let shutdown = shutdown::on_signal();
    let admin = AdminServer::bind(config.admin.listen()).await?;
    let xds_listen = config.xds.listen();
    let bound = server
        .bind(xds_listen.clone())
        .await
        .with_context(|| format!("binding the xDS listener {xds_listen:?}"))?;
    tracing::info!(
        xds = ?xds_listen,
        admin = %config.admin.listen(),
        consul = %config.consul.address(),
        "consul-eds-server serving"
    );

    let mut admin_routes = EdsAdmin::new(state.clone());
    let engine_task = if config.gateway.gateway {
        let view = GatewayView::default();
        admin_routes = admin_routes.with_gateway(view.clone());
        let metrics = GatewayMetrics::default();
        metrics.register(&mut registry);
        let (targets_tx, targets) = watch::channel(Default::default());
        let (instances, instances_rx) = mpsc::unbounded_channel();
        let gateway = Gateway::new(
            gateway_settings(&config),
            targets_tx,
            Publisher::new(
                cache.clone(),
                clients,
                SHARED_NODE_KEY,
                Duration::from_secs(5),
            ),
            view,
            metrics,
        );
        tracing::info!(
            listeners = config.gateway.listeners.len(),
            prefix = %config.gateway.tag_prefix,
            "gateway mode: listeners, routes and clusters from route tags"
        );
        tokio::spawn(gateway.run(
            catalog_events(&client, watch_config),
            instances_rx,
            shutdown.clone(),
        ));
        tokio::spawn(engine.run_gateway(
            demand,
            GatewayLink { targets, instances },
            shutdown.clone(),
        ))
    } else {
        tokio::spawn(engine.run(demand, shutdown.clone()))
    };
    let admin_task =
        tokio::spawn(admin.serve(Arc::new(registry), Arc::new(admin_routes), shutdown.clone()));
    let probe_task = tokio::spawn(probe_consul(client, state, shutdown.clone()));

    let drained = shutdown.clone();
    let served = bound.serve(async move { drained.cancelled().await }).await;
    // However the server stopped, stop the rest with it.
    shutdown.cancel();
    let _ = tokio::join!(engine_task, admin_task, probe_task);
    served.context("xDS server")?;
    tracing::info!("stopped");
    Ok(())
}

fn gateway_settings(config: &Config) -> GatewaySettings {
    GatewaySettings {
        prefix: config.gateway.tag_prefix.clone(),
        listeners: config.gateway.listeners.clone(),
        translate: TranslateSettings {
            sds_cluster: config.gateway.sds_cluster.clone(),
            trusted_hops: config.gateway.trusted_hops,
            ..TranslateSettings::default()
        },
        coalesce: config.coalesce,
        reset_grace: config.reset_grace,
        first_read_bound: Duration::from_secs(10),
        ack_timeout: Duration::from_secs(5),
    }
}

/// The catalog's service list as the gateway reads it: a failed or
/// ACL-filtered answer is not believed, and an answer that does not follow
/// on from the last (index reset, first after failures) says so.
fn catalog_events(client: &Client, config: WatchConfig) -> BoxStream<'static, CatalogEvent> {
    client
        .watch_catalog_services(config)
        .map(|event| match event {
            WatchEvent::Value { meta, .. } if meta.results_filtered_by_acls => {
                CatalogEvent::Unbelieved {
                    reason: "Consul filtered the service list by the token's ACLs".to_owned(),
                }
            }
            WatchEvent::Value {
                value, continuity, ..
            } => CatalogEvent::Services {
                services: value,
                after_reset: continuity.breaks_continuity(),
            },
            WatchEvent::Degraded { error, .. } => CatalogEvent::Unbelieved {
                reason: error.to_string(),
            },
        })
        .boxed()
}

/// Until the first successful call, `/readyz` says "starting": a server that
/// has never reached Consul has nothing trustworthy to serve. With no Envoy
/// subscribed yet, reaching Consul is the whole first sync.
async fn probe_consul(
    client: Client,
    state: ServedState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    loop {
        match client.agent_self().await {
            Ok(agent) => {
                tracing::info!(datacenter = %agent.datacenter, node = %agent.node_name, "connected to Consul");
                if state.clusters().is_empty() {
                    state.mark_first_sync_done();
                }
                return;
            }
            Err(error) => tracing::warn!(%error, "Consul not reachable yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn consul_client(config: &Config, registry: &mut Registry) -> Result<Client> {
    let mut client_config = config
        .consul
        .client_config()
        .context("--consul-* flags (or CONSUL_* variables)")?;
    client_config.datacenter = config.datacenter.clone();
    client_config.max_blocking_queries = config.max_blocking_queries;
    let metrics = ClientMetrics::default();
    metrics.register(registry);
    Client::with_metrics(client_config, metrics).context("building the Consul client")
}
