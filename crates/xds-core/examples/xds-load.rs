//! xDS load client: many ADS streams against a server in a child process.
//!
//! `xds-load run` starts `xds-load serve` (this same binary) as the server,
//! opens `--streams` ADS streams (one connection each, like a fleet of
//! Envoys) that all subscribe to the endpoints of `--clusters` clusters,
//! then asks the server to change one cluster, and then every cluster, a
//! few times over. For each change it measures, per stream, the time from
//! just before the server's cache write to the stream receiving the
//! response (both processes read the same wall clock), and reports
//! percentiles, pushes per second, and the server's memory and CPU from
//! `/proc/<pid>`.
//!
//! Run it through `cargo xtask bench xds`, which builds it in release mode.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Node, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use xds_core::{Listen, ResourceType, SharedKey, SnapshotCache, XdsServer};

const KEY: &str = "fleet";

#[derive(Debug, Parser)]
#[command(about = "xDS load client and server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server in a child process and drive it.
    Run(RunArgs),
    /// The server side (started by `run`).
    Serve(Shape),
}

#[derive(Debug, Clone, clap::Args)]
struct Shape {
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    shape: Shape,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Rounds in which a single cluster changes.
    #[arg(long, default_value_t = 5)]
    one_cluster_rounds: usize,
    /// Rounds in which every cluster changes.
    #[arg(long, default_value_t = 3)]
    all_cluster_rounds: usize,
    /// Use the delta protocol instead of state of the world.
    #[arg(long)]
    delta: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    match cli.command {
        Command::Serve(shape) => runtime.block_on(serve(shape)),
        Command::Run(args) => runtime.block_on(run(args)),
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Cluster `c`'s endpoints; `generation` shifts the ports so every
/// generation is different content.
fn assignment(c: usize, endpoints: usize, generation: usize) -> ClusterLoadAssignment {
    let lb_endpoints = (0..endpoints)
        .map(|e| {
            let ip = format!("10.{}.{}.{}", c / 250 % 250, c % 250, e % 250 + 1);
            let port = 10_000 + u32::try_from((e + generation) % 50_000).unwrap_or(0);
            LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip,
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: format!("cluster-{c:04}"),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

// --- Server side ---

async fn serve(shape: Shape) -> Result<()> {
    let cache = SnapshotCache::new(SharedKey(KEY.to_owned()));
    let mut generations = vec![0usize; shape.clusters];
    let all = |generations: &[usize]| -> Vec<ClusterLoadAssignment> {
        (0..shape.clusters)
            .map(|c| assignment(c, shape.endpoints, generations[c]))
            .collect()
    };
    cache.set_endpoints(KEY, &all(&generations))?;
    let bound = XdsServer::new(cache.clone())
        .bind(Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))))
        .await?;
    let addr = bound.local_addr().context("a TCP address")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("LISTEN {addr}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut next_one = 0usize;
    while let Some(line) = lines.next_line().await? {
        let started = unix_nanos();
        match line.trim() {
            "update-one" => {
                generations[next_one % shape.clusters] += 1;
                next_one += 1;
                cache.set_endpoints(KEY, &all(&generations))?;
            }
            "update-all" => {
                generations.iter_mut().for_each(|g| *g += 1);
                cache.set_endpoints(KEY, &all(&generations))?;
            }
            "quit" => break,
            other => bail!("unknown command `{other}`"),
        }
        stdout
            .write_all(format!("SET {started}\n").as_bytes())
            .await?;
        stdout.flush().await?;
    }
    let _ = stop.send(());
    serving.await??;
    Ok(())
}

// --- Client side ---

/// One response as a stream saw it.
struct Receipt {
    at_nanos: u128,
    resources: usize,
    bytes: usize,
}

impl Receipt {
    fn new(at_nanos: u128, resources: usize, bytes: usize) -> Self {
        Self {
            at_nanos,
            resources,
            bytes,
        }
    }
}

/// The node stream `id` speaks as.
fn load_node(id: usize) -> Node {
    Node {
        id: format!("load-{id}"),
        cluster: "load".to_owned(),
        ..Node::default()
    }
}

async fn connect(url: &str) -> Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())?.connect().await?)
}

/// What the load client does differently in each protocol variant.
trait LoadRequest: std::fmt::Debug + Send + Sync + Sized + 'static {
    type Response;

    /// The first request: the node and every name.
    fn subscribe(id: usize, names: &[String]) -> Self;

    fn open(
        client: AggregatedDiscoveryServiceClient<Channel>,
        requests: UnboundedReceiverStream<Self>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<Self::Response>>, tonic::Status>>;

    /// How many resources a response carries, and their encoded bytes.
    fn size(response: &Self::Response) -> (usize, usize);

    /// The ACK of `response`, still subscribed to every name.
    fn ack(response: Self::Response, names: &[String]) -> Self;
}

impl LoadRequest for DiscoveryRequest {
    type Response = DiscoveryResponse;

    fn subscribe(id: usize, names: &[String]) -> Self {
        Self {
            node: Some(load_node(id)),
            type_url: ResourceType::Endpoint.type_url().to_owned(),
            resource_names: names.to_vec(),
            ..Self::default()
        }
    }

    async fn open(
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        requests: UnboundedReceiverStream<Self>,
    ) -> Result<tonic::Response<Streaming<DiscoveryResponse>>, tonic::Status> {
        client.stream_aggregated_resources(requests).await
    }

    fn size(response: &DiscoveryResponse) -> (usize, usize) {
        let bytes = response.resources.iter().map(|r| r.value.len()).sum();
        (response.resources.len(), bytes)
    }

    fn ack(response: DiscoveryResponse, names: &[String]) -> Self {
        Self {
            version_info: response.version_info,
            type_url: response.type_url,
            resource_names: names.to_vec(),
            response_nonce: response.nonce,
            ..Self::default()
        }
    }
}

impl LoadRequest for DeltaDiscoveryRequest {
    type Response = DeltaDiscoveryResponse;

    fn subscribe(id: usize, names: &[String]) -> Self {
        Self {
            node: Some(load_node(id)),
            type_url: ResourceType::Endpoint.type_url().to_owned(),
            resource_names_subscribe: names.to_vec(),
            ..Self::default()
        }
    }

    async fn open(
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        requests: UnboundedReceiverStream<Self>,
    ) -> Result<tonic::Response<Streaming<DeltaDiscoveryResponse>>, tonic::Status> {
        client.delta_aggregated_resources(requests).await
    }

    fn size(response: &DeltaDiscoveryResponse) -> (usize, usize) {
        let bytes = response
            .resources
            .iter()
            .filter_map(|r| r.resource.as_ref())
            .map(|a| a.value.len())
            .sum();
        (response.resources.len(), bytes)
    }

    fn ack(response: DeltaDiscoveryResponse, _names: &[String]) -> Self {
        Self {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Self::default()
        }
    }
}

/// An ADS stream of either variant that ACKs everything and reports each
/// response.
async fn ads_stream<R: LoadRequest>(
    channel: Channel,
    id: usize,
    names: Arc<Vec<String>>,
    receipts: mpsc::UnboundedSender<Receipt>,
) -> Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(R::subscribe(id, &names))?;
    let client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let mut responses = R::open(client, UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        let at_nanos = unix_nanos();
        let (resources, bytes) = R::size(&response);
        tx.send(R::ack(response, &names))?;
        if receipts
            .send(Receipt::new(at_nanos, resources, bytes))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// The server process's memory and CPU, from `/proc`.
struct ProcStats {
    rss_kib: u64,
    peak_rss_kib: u64,
    cpu_ticks: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ), which is
/// 100 on every mainstream Linux platform.
const TICKS_PER_SECOND: f64 = 100.0;

fn proc_stats(pid: u32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces): utime is
    // the 14th field of the line, stime the 15th.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        cpu_ticks: tick(11) + tick(12),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Round {
    latencies_ms: Vec<f64>,
    span_ms: f64,
    resources: usize,
    bytes: usize,
}

async fn run(args: RunArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "serve",
            "--clusters",
            &args.shape.clusters.to_string(),
            "--endpoints",
            &args.shape.endpoints.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the server process")?;
    let pid = child.id().context("server pid")?;
    let mut server_in = child.stdin.take().context("server stdin")?;
    let mut server_out = BufReader::new(child.stdout.take().context("server stdout")?).lines();
    let listen = server_out.next_line().await?.context("server exited")?;
    let addr = listen
        .strip_prefix("LISTEN ")
        .context("unexpected server output")?
        .to_owned();
    let url = format!("http://{addr}");
    let protocol = if args.delta {
        "delta"
    } else {
        "state of the world"
    };
    println!(
        "xds-core load: {} ADS streams ({protocol}), each subscribed to {} clusters of {} endpoints; server pid {pid}",
        args.streams, args.shape.clusters, args.shape.endpoints
    );

    let names: Arc<Vec<String>> = Arc::new(
        (0..args.shape.clusters)
            .map(|c| format!("cluster-{c:04}"))
            .collect(),
    );
    let (receipts_tx, mut receipts) = mpsc::unbounded_channel::<Receipt>();
    let connecting = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    for id in 0..args.streams {
        let permit = connecting.clone().acquire_owned().await?;
        let url = url.clone();
        let names = names.clone();
        let receipts = receipts_tx.clone();
        let delta = args.delta;
        tokio::spawn(async move {
            let channel = match connect(&url).await {
                Ok(channel) => channel,
                Err(e) => {
                    eprintln!("stream {id}: {e:#}");
                    return;
                }
            };
            drop(permit);
            let result = if delta {
                ads_stream::<DeltaDiscoveryRequest>(channel, id, names, receipts).await
            } else {
                ads_stream::<DiscoveryRequest>(channel, id, names, receipts).await
            };
            let shut_down = |e: &anyhow::Error| {
                e.downcast_ref::<tonic::Status>()
                    .is_some_and(|s| s.code() == tonic::Code::Unavailable)
            };
            if let Err(e) = result
                && !shut_down(&e)
            {
                eprintln!("stream {id}: {e:#}");
            }
        });
    }
    drop(receipts_tx);
    let mut initial_bytes = 0usize;
    for _ in 0..args.streams {
        let receipt = tokio::time::timeout(Duration::from_secs(300), receipts.recv())
            .await
            .context("initial sync timed out")?
            .context("streams failed")?;
        if receipt.resources != args.shape.clusters {
            bail!("an initial response carried {} clusters", receipt.resources);
        }
        initial_bytes += receipt.bytes;
    }
    let sync = started.elapsed();
    let after_sync = proc_stats(pid)?;
    println!(
        "initial sync: {} streams x {} clusters in {:.2} s ({:.1} MB of resources)",
        args.streams,
        args.shape.clusters,
        sync.as_secs_f64(),
        initial_bytes as f64 / 1e6
    );

    let mut rounds: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
    let plan = std::iter::repeat_n("update-one", args.one_cluster_rounds)
        .chain(std::iter::repeat_n("update-all", args.all_cluster_rounds));
    let cpu_before = proc_stats(pid)?.cpu_ticks;
    for command in plan {
        server_in
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        server_in.flush().await?;
        let set = server_out.next_line().await?.context("server exited")?;
        let set_at: u128 = set
            .strip_prefix("SET ")
            .and_then(|t| t.parse().ok())
            .context("unexpected server output")?;
        let mut round = Round {
            latencies_ms: Vec::with_capacity(args.streams),
            span_ms: 0.0,
            resources: 0,
            bytes: 0,
        };
        for _ in 0..args.streams {
            let receipt = tokio::time::timeout(Duration::from_secs(300), receipts.recv())
                .await
                .context("a push timed out")?
                .context("streams failed")?;
            let ms = receipt.at_nanos.saturating_sub(set_at) as f64 / 1e6;
            round.latencies_ms.push(ms);
            round.span_ms = round.span_ms.max(ms);
            round.resources += receipt.resources;
            round.bytes += receipt.bytes;
        }
        rounds.entry(command).or_default().push(round);
        // Let the ACKs land before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = proc_stats(pid)?;
    let cpu_seconds = (end.cpu_ticks - cpu_before) as f64 / TICKS_PER_SECOND;

    for (command, label) in [
        ("update-one", "one cluster changed"),
        ("update-all", "every cluster changed"),
    ] {
        let Some(rounds) = rounds.get(command) else {
            continue;
        };
        let mut all: Vec<f64> = rounds.iter().flat_map(|r| r.latencies_ms.clone()).collect();
        all.sort_by(f64::total_cmp);
        let pushes: usize = rounds.iter().map(|r| r.latencies_ms.len()).sum();
        let span_s: f64 = rounds.iter().map(|r| r.span_ms).sum::<f64>() / 1e3;
        let per_push = rounds.iter().map(|r| r.resources).sum::<usize>() as f64 / pushes as f64;
        let mb = rounds.iter().map(|r| r.bytes).sum::<usize>() as f64 / 1e6;
        println!(
            "{label} ({} rounds): set -> received p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
             {:.0} pushes/s; {:.0} clusters per push; {:.1} MB sent",
            rounds.len(),
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            all.last().copied().unwrap_or(f64::NAN),
            pushes as f64 / span_s,
            per_push,
            mb,
        );
    }
    println!(
        "server: RSS {:.1} MiB after sync, {:.1} MiB at the end, peak {:.1} MiB; CPU {:.2} s during the rounds",
        after_sync.rss_kib as f64 / 1024.0,
        end.rss_kib as f64 / 1024.0,
        end.peak_rss_kib as f64 / 1024.0,
        cpu_seconds
    );
    std::io::stdout().flush()?;
    server_in.write_all(b"quit\n").await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    Ok(())
}
