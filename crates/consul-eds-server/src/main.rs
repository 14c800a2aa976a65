//! `consul-eds-server`: Consul's catalog and health -> Envoy EDS.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use consul_client::{Client, ClientMetrics, WatchConfig};
use consul_eds_server::admin::EdsAdmin;
use consul_eds_server::config::Config;
use consul_eds_server::engine::{Engine, EngineSettings};
use consul_eds_server::metrics::EngineMetrics;
use consul_eds_server::naming::ClusterNaming;
use consul_eds_server::sink::{CacheSink, SHARED_NODE_KEY};
use consul_eds_server::source::{ConsulSource, EntryReader};
use consul_eds_server::state::ServedState;
use prometheus_client::registry::Registry;
use service_support::admin::AdminServer;
use service_support::{logging, shutdown};
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

    let state = ServedState::default();
    let engine_metrics = EngineMetrics::default();
    engine_metrics.register(&mut registry);
    let source = ConsulSource::new(
        client.clone(),
        EntryReader::new(config.address, config.zone_meta_key.clone()),
        WatchConfig {
            datacenter: config.datacenter.clone(),
            stale: config.stale,
            ..WatchConfig::default()
        },
        config.per_service_watch_limit(),
        config.dc_wide_sweep,
    );
    let engine = Engine::new(
        EngineSettings {
            naming,
            policy: config.health_policy(),
            failover_dcs: config.failover_dcs.clone(),
            allowed_services: config.services.iter().cloned().collect::<BTreeSet<_>>(),
            coalesce: config.coalesce,
            reset_grace: config.reset_grace,
        },
        Arc::new(source),
        CacheSink::new(cache),
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

    let admin_task = tokio::spawn(admin.serve(
        Arc::new(registry),
        Arc::new(EdsAdmin::new(state.clone())),
        shutdown.clone(),
    ));
    let engine_task = tokio::spawn(engine.run(demand, shutdown.clone()));
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
