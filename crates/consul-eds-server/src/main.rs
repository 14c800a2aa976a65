//! `consul-eds-server`: Consul's catalog and health, Nomad's service
//! registry -> Envoy EDS (and the whole gateway with `--gateway`).

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
use consul_eds_server::engine::{Engine, EngineSettings, GatewayLink};
use consul_eds_server::gateway::actor::{CatalogEvent, Gateway, GatewaySettings};
use consul_eds_server::gateway::publish::Publisher;
use consul_eds_server::gateway::translate::TranslateSettings;
use consul_eds_server::gateway::view::{GatewayMetrics, GatewayView};
use consul_eds_server::metrics::EngineMetrics;
use consul_eds_server::model::SourceKind;
use consul_eds_server::naming::ClusterNaming;
use consul_eds_server::registries::{SourceSet, merge_catalogs};
use consul_eds_server::sink::{CacheSink, SHARED_NODE_KEY};
use consul_eds_server::source::nomad::{self, NomadSettings, NomadSource};
use consul_eds_server::source::{ConsulSource, EntryReader};
use consul_eds_server::state::ServedState;
use futures::StreamExt;
use futures::stream::BoxStream;
use nomad_client::{NomadClient, NomadMetrics};
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
    config.nomad.validate()?;
    let mut registry = Registry::default();
    let client = consul_client(&config, &mut registry)?;
    let nomad = if config.nomad.reads(SourceKind::Nomad) {
        Some(nomad_client(&config, &mut registry)?)
    } else {
        None
    };
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
    let mut sources = SourceSet::default();
    if config.nomad.reads(SourceKind::Consul) {
        let consul = ConsulSource::new(
            client.clone(),
            EntryReader::new(config.address, config.zone_meta_key.clone()),
            watch_config.clone(),
            config.per_service_watch_limit(),
            config.dc_wide_sweep,
        );
        sources = sources.with(SourceKind::Consul, Arc::new(consul));
    }
    if let Some(nomad) = &nomad {
        let check_interval = Some(config.nomad.nomad_check_interval).filter(|i| !i.is_zero());
        let settings = NomadSettings {
            watch: nomad_client::WatchConfig::default(),
            check_interval,
        };
        sources = sources.with(
            SourceKind::Nomad,
            Arc::new(NomadSource::new(nomad.clone(), settings)),
        );
    }
    let source = sources;
    // `--nomad-namespace '*'`: one checked listing says where each service
    // is, for the engine and the gateway's catalog alike.
    let mut every_namespace = None;
    if let Some(nomad) = &nomad
        && config.nomad.selection().reads_every_nomad_namespace()
    {
        every_namespace = Some(nomad::all_namespaces(
            nomad,
            nomad_client::WatchConfig::default(),
        ));
    }
    let (nomad_listing, mut every_namespace_catalog) = every_namespace.unzip();
    let mut engine = Engine::new(
        EngineSettings {
            naming,
            policy: config.health_policy(),
            failover_dcs: config.failover_dcs.clone(),
            sources: config.nomad.selection(),
            allowed_services: config.services.iter().cloned().collect::<BTreeSet<_>>(),
            coalesce: config.coalesce,
            reset_grace: config.reset_grace,
        },
        Arc::new(source),
        CacheSink::new(cache.clone()),
        state.clone(),
        engine_metrics,
    );
    if let Some(listing) = nomad_listing {
        engine = engine.with_nomad_listing(listing);
    }

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
        sources = ?config.nomad.sources,
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
        let mut catalogs = Vec::new();
        if config.nomad.reads(SourceKind::Consul) {
            catalogs.push(("consul".to_owned(), catalog_events(&client, watch_config)));
        }
        if let Some(catalog) = every_namespace_catalog.take() {
            catalogs.push(("nomad/*".to_owned(), catalog));
        } else if let Some(nomad) = &nomad {
            for namespace in config.nomad.selection().nomad_namespaces {
                catalogs.push((
                    format!("nomad/{namespace}"),
                    nomad::catalog_events(nomad, &namespace, nomad_client::WatchConfig::default()),
                ));
            }
        }
        tokio::spawn(gateway.run(merge_catalogs(catalogs), instances_rx, shutdown.clone()));
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
    let probe_task = tokio::spawn(probe_sources(
        config.nomad.reads(SourceKind::Consul).then_some(client),
        nomad.map(|nomad| (nomad, config.nomad.selection().nomad_namespaces)),
        state,
        shutdown.clone(),
    ));

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

/// Until the first successful call to every registry read, `/readyz` says
/// "starting": a server that has never reached them has nothing
/// trustworthy to serve. With no Envoy subscribed yet, reaching them is the
/// whole first sync.
async fn probe_sources(
    consul: Option<Client>,
    nomad: Option<(NomadClient, Vec<String>)>,
    state: ServedState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let consul = async {
        let Some(client) = consul else { return };
        retry("Consul", &shutdown, || async {
            let agent = client.agent_self().await?;
            tracing::info!(datacenter = %agent.datacenter, node = %agent.node_name, "connected to Consul");
            Ok::<_, consul_client::Error>(())
        })
        .await;
    };
    let nomad = async {
        let Some((client, namespaces)) = nomad else {
            return;
        };
        retry("Nomad", &shutdown, || async {
            // A listing of each namespace read: it proves the address, the
            // token and its right to read them, which the engine's first
            // reads need.
            for namespace in &namespaces {
                client.services(namespace).await?;
            }
            tracing::info!(address = %client.address(), ?namespaces, "connected to Nomad");
            Ok::<_, nomad_client::Error>(())
        })
        .await;
    };
    tokio::join!(consul, nomad);
    if !shutdown.is_cancelled() && state.clusters().is_empty() {
        state.mark_first_sync_done();
    }
}

/// Calls `attempt` until it succeeds or `shutdown`, backing off to 10 s.
async fn retry<F, Fut, E>(what: &str, shutdown: &tokio_util::sync::CancellationToken, attempt: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(error) => tracing::warn!(%error, "{what} not reachable yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn nomad_client(config: &Config, registry: &mut Registry) -> Result<NomadClient> {
    let client_config = config
        .nomad
        .client_config()
        .context("--nomad-* flags (or NOMAD_* variables)")?;
    let metrics = NomadMetrics::new();
    metrics.register(registry);
    NomadClient::with_metrics(client_config, metrics).context("building the Nomad client")
}

fn consul_client(config: &Config, registry: &mut Registry) -> Result<Client> {
    let mut client_config = config
        .consul
        .client_config()
        .context("--consul-* flags (or CONSUL_* variables)")?;
    client_config.datacenter = config.datacenter.clone();
    client_config.max_blocking_queries = config.max_blocking_queries;
    client_config.max_concurrent_requests = consul_eds_server::source::OTHER_REQUESTS;
    let metrics = ClientMetrics::default();
    metrics.register(registry);
    Client::with_metrics(client_config, metrics).context("building the Consul client")
}
