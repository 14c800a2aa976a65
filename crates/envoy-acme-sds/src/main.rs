//! `envoy-acme-sds`: wiring only; every piece lives in the library.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use consul_client::{Client, ClientMetrics};
use nomad_client::{NomadClient, NomadMetrics};
use prometheus_client::registry::Registry;
use service_support::admin::AdminServer;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use xds_core::{ServerOptions, SharedKey, SnapshotCache, XdsServer};

use envoy_acme_sds::admin::SdsAdmin;
use envoy_acme_sds::challenge::ChallengeSolver;
use envoy_acme_sds::challenge::consul_tokens::ConsulTokenStore;
use envoy_acme_sds::challenge::dns01::{Rfc2136Config, Rfc2136Solver, TsigKey};
use envoy_acme_sds::challenge::exec::{ExecHookConfig, ExecHookSolver};
use envoy_acme_sds::challenge::http01::{Http01Server, Http01Solver, MemoryTokenStore, TokenStore};
use envoy_acme_sds::config::{
    ChallengeSettings, Cli, Command, Layer, RenewArgs, Settings, StorageLocation,
};
use envoy_acme_sds::metrics::ServiceMetrics;
use envoy_acme_sds::outcomes::{LastOutcomes, Observers};
use envoy_acme_sds::renewer::{ManagedCertificate, Renewer};
use envoy_acme_sds::routed::follower::RouteFollower;
use envoy_acme_sds::routed::orders::{RoutedOrdering, SolverSource};
use envoy_acme_sds::routed::policy::RoutedPolicy;
use envoy_acme_sds::routed::sources;
use envoy_acme_sds::sds::{SecretPublisher, ServedSecret};
use envoy_acme_sds::storage_mode::{LockSettings, Replica, StorageMode};
use envoy_acme_sds::store::RenewalRequest;

/// Every Envoy gets the same secrets: one snapshot under one key.
const NODE_KEY: &str = "envoy-acme-sds";

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // One TLS provider for every client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Some(Command::Renew(args)) => renew(args).await,
        None => serve(cli.run).await,
    }
}

async fn serve(args: Layer) -> Result<()> {
    service_support::logging::init(args.log_format.unwrap_or_default());
    let settings = args.resolve().context("invalid configuration")?;
    if settings.storage.plaintext_keys_allowed && settings.storage.encryption.is_none() {
        warn!(
            storage = %settings.storage.location,
            "--allow-plaintext-keys: private keys are stored in plaintext, readable by anyone \
             who can read the storage; give --encryption-key-file to seal them"
        );
    }
    let shutdown = service_support::shutdown::on_signal();

    let mut registry = Registry::default();
    let metrics = ServiceMetrics::default();
    metrics.register(&mut registry);
    let xds_metrics = xds_core::Metrics::default();
    xds_metrics.register(&mut registry);
    // Consul storage's client reads the catalog too; routed hosts read from
    // Consul with disk storage bring their own. Routes read from Nomad
    // alone with disk storage need no Consul at all.
    let consul_config = settings.storage.consul.as_ref().or(settings
        .routes
        .as_ref()
        .and_then(|routes| routes.consul.as_ref()));
    let consul = match consul_config {
        Some(config) => {
            let client_metrics = ClientMetrics::new();
            client_metrics.register(&mut registry);
            Some(Client::with_metrics(config.clone(), client_metrics).context("Consul client")?)
        }
        None => None,
    };

    let (wake, wake_receiver) = watch::channel(());
    let mut tasks = JoinSet::new();
    tasks.spawn(reconcile_on_sighup(wake.clone(), shutdown.clone()));

    let solvers =
        Arc::new(Solvers::start(&settings, consul.as_ref(), &mut tasks, &shutdown).await?);
    let certificates = managed_certificates(&settings, &solvers)?;
    let mut acme = settings.acme.clone();
    acme.request_duration = Some(metrics.acme_request_duration());
    acme.withdrawal_failures = Some(metrics.withdrawal_failures());
    let withdrawals = acme.withdrawals.clone();
    let outcomes = LastOutcomes::default();
    let observer: Arc<dyn envoy_acme_sds::manager::RenewalObserver> = Arc::new(Observers(vec![
        Arc::new(metrics.clone()),
        Arc::new(outcomes.clone()),
    ]));
    let mut renewer = Renewer::new(certificates, acme, wake_receiver).with_observer(observer);
    let account_status = renewer.account_status();

    let cache = SnapshotCache::new(SharedKey(NODE_KEY.to_owned()));
    let wanted = settings
        .certificates
        .iter()
        .map(|c| ServedSecret {
            name: c.spec.secret_name.clone(),
            validation_context: c.validation_context.clone(),
        })
        .collect();
    let mut publisher = SecretPublisher::new(
        cache.clone(),
        NODE_KEY,
        wanted,
        settings.storage.location.to_string(),
    )
    .with_metrics(metrics.clone());
    if settings.routes.is_some() {
        publisher = publisher.serving_every_stored();
    }
    let publisher = Arc::new(publisher);
    let storage = StorageMode::open(
        &settings.storage.location,
        settings.storage.encryption.clone(),
        settings.storage.previous_encryption.clone(),
        consul.clone(),
    )?;
    let mut routed_view = None;
    if let Some(routes) = &settings.routes {
        let mut catalogs = Vec::new();
        if routes.consul.is_some() {
            let client = consul
                .as_ref()
                .context("the Consul client routes are read with")?;
            catalogs.push(sources::consul_catalog(client));
        }
        if let Some(nomad) = &routes.nomad {
            let nomad_metrics = NomadMetrics::new();
            nomad_metrics.register(&mut registry);
            let client = NomadClient::with_metrics(nomad.client.clone(), nomad_metrics)
                .context("Nomad client")?;
            for namespace in &nomad.namespaces {
                catalogs.push(sources::nomad_catalog(&client, namespace));
            }
        }
        let read: Vec<String> = catalogs.iter().map(|(name, _)| name.clone()).collect();
        let policy = RoutedPolicy {
            allowed: routes.allowed.clone(),
            configured: settings
                .certificates
                .iter()
                .map(|c| c.spec.clone())
                .collect(),
            http01: settings.challenge.is_http01(),
        };
        let follower = RouteFollower::new(
            sources::union_of(catalogs),
            routes.prefix.clone(),
            policy,
            Arc::clone(&publisher),
            metrics.clone(),
            routes.unrouted_grace,
        );
        let follower = follower.with_record_from(storage.store());
        let view = follower.subscribe();
        let records = follower.record_sender();
        tasks.spawn(follower.run(shutdown.clone()));
        renewer = renewer.with_routed(RoutedOrdering {
            view: view.clone(),
            solvers: Arc::clone(&solvers) as Arc<dyn SolverSource>,
            orders_per_hour: routes.orders_per_hour,
            unrouted_grace: routes.unrouted_grace,
            key_type: routes.key_type,
            profile: routes.profile.clone(),
            records,
            metrics: metrics.clone(),
        });
        info!(prefix = %routes.prefix.as_str(), allowed = ?routes.allowed.iter().map(ToString::to_string).collect::<Vec<_>>(), catalogs = ?read, "following the routed TLS hosts in the registries");
        routed_view = Some((view, routes.unrouted_grace));
    }
    tasks.spawn(announce_when_complete(
        Arc::clone(&publisher),
        shutdown.clone(),
    ));

    let xds = XdsServer::new(cache)
        .with_metrics(xds_metrics)
        .with_options(ServerOptions {
            tls: settings.sds_tls.clone(),
            drain_timeout: settings.shutdown_grace,
            ..ServerOptions::default()
        })
        .bind(settings.sds_listen.clone())
        .await
        .context("SDS listener")?;
    let admin = AdminServer::bind(settings.admin_listen)
        .await
        .context("admin listener")?;
    info!(sds = ?settings.sds_listen, admin = %settings.admin_listen, storage = %settings.storage.location, "envoy-acme-sds starting");

    let (keys_at_rest, keys_at_rest_seen) = watch::channel(None);
    let replica = Replica {
        renewer,
        publisher: Arc::clone(&publisher),
        wake: wake.clone(),
        metrics: metrics.clone(),
        lock: LockSettings {
            holder: settings.instance_name.clone(),
            session_ttl: settings.session_ttl,
            lock_delay: settings.lock_delay,
        },
        keys_at_rest,
    };
    let election = storage.start(replica, &mut tasks, &shutdown).await;
    let (leadership, lock_holder) = match election {
        Some(view) => (Some(view.leadership), Some(view.holder)),
        None => (None, None),
    };

    let mut admin_routes = SdsAdmin::new(
        Arc::clone(&publisher),
        leadership,
        settings.instance_name.clone(),
    )
    .with_keys_at_rest(keys_at_rest_seen)
    .with_outcomes(outcomes)
    .with_account(account_status);
    if let Some((view, grace)) = routed_view {
        admin_routes = admin_routes.with_routed(view, grace);
    }
    if let Some(holder) = lock_holder {
        admin_routes = admin_routes.with_lock_holder(holder);
    }
    let routes = Arc::new(admin_routes);
    tasks.spawn(admin.serve(Arc::new(registry), routes, shutdown.clone()));
    // A process without its SDS server serves nothing while looking alive
    // (`/readyz` would stay 200): if the server fails, the whole process
    // stops with an error, so the orchestrator restarts it.
    let sds_failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let xds_shutdown = shutdown.clone();
    let failure = Arc::clone(&sds_failure);
    tasks.spawn(async move {
        if let Err(error) = xds.serve(xds_shutdown.clone().cancelled_owned()).await {
            error!(error = %error, "SDS server failed; stopping");
            *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
            xds_shutdown.cancel();
        }
    });

    shutdown.cancelled().await;
    // The SDS drain has its own deadline; the rest (releasing the lock) is quick.
    let deadline = settings.shutdown_grace + Duration::from_secs(5);
    // Challenge withdrawals of a finished order run on after it: let them
    // end too, or a `_acme-challenge` record stays behind.
    withdrawals.close();
    let drained = tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
        withdrawals.wait().await;
    })
    .await;
    if drained.is_err() {
        warn!(
            ?deadline,
            "tasks still running after the shutdown deadline; exiting anyway"
        );
    }
    if let Some(error) = sds_failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("SDS server failed: {error}");
    }
    info!("stopped");
    Ok(())
}

/// The challenge solvers: one shared (HTTP-01, exec hook), or one per
/// RFC 2136 zone, made when a certificate of the zone first needs it.
#[derive(Debug)]
struct Solvers {
    shared: Option<Arc<dyn ChallengeSolver>>,
    rfc2136: Option<(std::net::SocketAddr, TsigKey)>,
    /// `--rfc2136-zone` for routed hosts, when given.
    routed_zone: Option<String>,
    by_zone: std::sync::Mutex<BTreeMap<String, Arc<dyn ChallengeSolver>>>,
}

impl Solvers {
    /// Starts the HTTP-01 listener if needed.
    async fn start(
        settings: &Settings,
        consul: Option<&Client>,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<Self> {
        let shared: Option<Arc<dyn ChallengeSolver>> = match &settings.challenge {
            ChallengeSettings::Rfc2136 { .. } => None,
            ChallengeSettings::Http01 { listen } => {
                let tokens: Arc<dyn TokenStore> = match (&settings.storage.location, consul) {
                    (StorageLocation::Consul { prefix }, Some(client)) => {
                        let tokens = ConsulTokenStore::new(client.clone(), prefix);
                        tasks.spawn(tokens.clone().follow(shutdown.clone()));
                        Arc::new(tokens)
                    }
                    _ => Arc::new(MemoryTokenStore::new()),
                };
                let server = Http01Server::bind(*listen, Arc::clone(&tokens))
                    .await
                    .context("HTTP-01 listener")?;
                tasks.spawn(server.serve(shutdown.clone()));
                Some(Arc::new(Http01Solver::new(tokens)))
            }
            ChallengeSettings::Exec { program, kind } => {
                let mut config = ExecHookConfig::new(program.clone());
                config.kind = *kind;
                Some(Arc::new(ExecHookSolver::new(config)))
            }
        };
        let rfc2136 = match &settings.challenge {
            ChallengeSettings::Rfc2136 { server, tsig } => Some((*server, tsig.clone())),
            _ => None,
        };
        Ok(Self {
            shared,
            rfc2136,
            routed_zone: settings.routes.as_ref().and_then(|r| r.zone.clone()),
            by_zone: std::sync::Mutex::default(),
        })
    }

    fn for_zone(&self, zone: &str) -> Result<Arc<dyn ChallengeSolver>> {
        if let Some(solver) = &self.shared {
            return Ok(Arc::clone(solver));
        }
        let Some((server, tsig)) = &self.rfc2136 else {
            anyhow::bail!("no challenge solver configured");
        };
        let mut by_zone = self.by_zone.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(solver) = by_zone.get(zone) {
            return Ok(Arc::clone(solver));
        }
        let solver: Arc<dyn ChallengeSolver> = Arc::new(
            Rfc2136Solver::new(Rfc2136Config::new(*server, zone.to_owned(), tsig.clone()))
                .with_context(|| format!("RFC 2136 solver for zone {zone}"))?,
        );
        by_zone.insert(zone.to_owned(), Arc::clone(&solver));
        Ok(solver)
    }
}

impl SolverSource for Solvers {
    fn solver_for(&self, zone: &str) -> std::result::Result<Arc<dyn ChallengeSolver>, String> {
        let zone = self.routed_zone.as_deref().unwrap_or(zone);
        self.for_zone(zone).map_err(|e| format!("{e:#}"))
    }
}

/// The solver of each configured certificate.
fn managed_certificates(settings: &Settings, solvers: &Solvers) -> Result<Vec<ManagedCertificate>> {
    settings
        .certificates
        .iter()
        .map(|certificate| {
            Ok(ManagedCertificate {
                spec: certificate.spec.clone(),
                solver: solvers.for_zone(&certificate.zone)?,
            })
        })
        .collect()
}

async fn announce_when_complete(publisher: Arc<SecretPublisher>, shutdown: CancellationToken) {
    let mut complete = publisher.subscribe_complete();
    tokio::select! {
        () = shutdown.cancelled() => {}
        done = complete.wait_for(|complete| *complete) => {
            if done.is_ok() {
                info!("every configured certificate is served; ready");
            }
        }
    }
}

/// SIGHUP: every manager reconciles now (picks up `renew` requests on disk).
async fn reconcile_on_sighup(wake: watch::Sender<()>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
                info!("SIGHUP: reconciling every certificate now");
                wake.send_replace(());
            }
        }
    }
}

/// `envoy-acme-sds renew`: records renewal requests in the store.
async fn renew(args: RenewArgs) -> Result<()> {
    service_support::logging::init(service_support::logging::LogFormat::Pretty);
    let (storage, names) = args.resolve().context("invalid configuration")?;
    let consul = storage.consul.clone().map(Client::new).transpose()?;
    let mode = StorageMode::open(
        &storage.location,
        storage.encryption.clone(),
        storage.previous_encryption.clone(),
        consul,
    )?;
    let store = mode.store();
    let now = OffsetDateTime::now_utc();
    for name in &names {
        // The request names the certificate it replaces, so the renewing
        // replica never compares this machine's clock with its own.
        let stored = store
            .load_certificate_metadata(name)
            .await
            .with_context(|| format!("reading the stored certificate {name}"))?;
        let Some(stored) = stored else {
            println!("no certificate {name} is stored yet: it is ordered without a request");
            continue;
        };
        store
            .request_renewal(name, &RenewalRequest::replacing(&stored, now))
            .await
            .with_context(|| format!("requesting the renewal of {name}"))?;
        println!("renewal of {name} (serial {}) requested", stored.serial);
    }
    if mode.needs_a_signal_for_requests() {
        println!("send SIGHUP to the running envoy-acme-sds to renew now");
    }
    Ok(())
}
