//! Shared helpers for the integration tests: a server on a free loopback
//! port, raw xDS clients, and Envoy resources.
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, Node, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use xds_core::{
    Listen, Metrics, ResourceType, ServerError, ServerOptions, SharedKey, SnapshotCache,
    SubscriptionRegistry, TypeStatus, XdsServer,
};

/// The node key every test Envoy maps to.
pub const KEY: &str = "gateways";

/// How long a test waits for something that should happen at once before
/// failing instead of hanging. Not a latency assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

pub fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: "test".to_owned(),
        ..Node::default()
    }
}

pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

pub fn lb_endpoint(address: SocketAddr) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(
                &address.ip().to_string(),
                u32::from(address.port()),
            )),
            ..Endpoint::default()
        })),
        ..LbEndpoint::default()
    }
}

/// A cluster's endpoints, one per address.
pub fn assignment(name: &str, addresses: &[SocketAddr]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addresses.iter().copied().map(lb_endpoint).collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An EDS cluster whose endpoints come over ADS.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ConfigSource {
                resource_api_version: 2, // V3
                config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..ConfigSource::default()
            }),
            ..cluster::EdsClusterConfig::default()
        }),
        ..Cluster::default()
    }
}

pub fn listener(name: &str) -> Listener {
    Listener {
        name: name.to_owned(),
        ..Listener::default()
    }
}

pub fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        ..RouteConfiguration::default()
    }
}

pub fn decode<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).expect("resource decodes")
}

/// The names of the resources in a SotW response.
pub fn names(response: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> =
        response
            .resources
            .iter()
            .map(|any| match ResourceType::from_type_url(&any.type_url) {
                Some(ResourceType::Cluster) => decode::<Cluster>(any).name,
                Some(ResourceType::Endpoint) => decode::<ClusterLoadAssignment>(any).cluster_name,
                Some(ResourceType::Listener) => decode::<Listener>(any).name,
                Some(ResourceType::Route) => decode::<RouteConfiguration>(any).name,
                Some(ResourceType::Secret) => decode::<
                    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
                >(any)
                .name,
                None => panic!("unexpected type {}", any.type_url),
            })
            .collect();
    names.sort();
    names
}

/// The names in a delta response's resources.
pub fn delta_names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = response.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

pub fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A server on a free loopback port, stopped by [`TestServer::stop`] or drop.
pub struct TestServer {
    pub cache: SnapshotCache,
    pub addr: SocketAddr,
    pub subscriptions: SubscriptionRegistry,
    pub clients: xds_core::ConnectedClients,
    pub metrics: Metrics,
    pub registry: prometheus_client::registry::Registry,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// A server with default options and an empty cache.
    pub async fn start() -> Self {
        Self::with_options(ServerOptions::default()).await
    }

    /// A server with `options` and an empty cache.
    pub async fn with_options(options: ServerOptions) -> Self {
        Self::start_with(new_cache(), options, addr(0)).await
    }

    /// A new server process at the address of one that stopped: its cache
    /// starts empty, as after a restart.
    pub async fn restart_at(at: SocketAddr) -> Self {
        Self::start_with(new_cache(), ServerOptions::default(), at).await
    }

    pub async fn start_with(cache: SnapshotCache, options: ServerOptions, at: SocketAddr) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::default();
        metrics.register(&mut registry);
        let server = XdsServer::new(cache.clone())
            .with_metrics(metrics.clone())
            .with_options(options);
        let subscriptions = server.subscriptions();
        let clients = server.clients();
        let bound = server.bind(Listen::Tcp(at)).await.expect("binds");
        let addr = bound.local_addr().expect("a TCP address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = stop.await;
        }));
        Self {
            cache,
            addr,
            subscriptions,
            clients,
            metrics,
            registry,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces every endpoint assignment of [`KEY`].
    pub fn set_endpoints(&self, assignments: &[ClusterLoadAssignment]) {
        self.cache.set_endpoints(KEY, assignments).expect("set");
    }

    /// Adds or replaces these assignments of [`KEY`], leaving the others.
    pub fn update_endpoints(&self, assignments: &[ClusterLoadAssignment]) {
        self.cache
            .update_endpoints(KEY, assignments, &[] as &[&str])
            .expect("update");
    }

    /// Replaces every cluster of [`KEY`].
    pub fn set_clusters(&self, clusters: &[Cluster]) {
        self.cache.set_clusters(KEY, clusters).expect("set");
    }

    /// Replaces every route configuration of [`KEY`].
    pub fn set_routes(&self, routes: &[RouteConfiguration]) {
        self.cache.set_routes(KEY, routes).expect("set");
    }

    /// What the (first) stream of `node_id` reports for `resource_type`.
    pub fn type_status(&self, node_id: &str, resource_type: ResourceType) -> TypeStatus {
        self.clients.of_node(node_id)[0].types[&resource_type].clone()
    }

    /// The names of `resource_type` some stream subscribes to, in order.
    pub fn subscribed(&self, resource_type: ResourceType) -> Vec<String> {
        self.subscriptions
            .names(resource_type)
            .into_iter()
            .collect()
    }

    /// Starts the graceful shutdown and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(HANG_GUARD, task)
            .await
            .expect("the server stops")
            .expect("server task")
    }

    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encodes");
        text
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An empty cache serving every node from [`KEY`].
pub fn new_cache() -> SnapshotCache {
    SnapshotCache::new(SharedKey(KEY.to_owned()))
}

pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .expect("valid url")
        .connect()
        .await
        .expect("connects")
}

/// The gRPC service a raw client opens its stream on.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Ads,
    Eds,
}

/// The request of one protocol variant (state of the world or delta), and
/// how a stream of it is opened on each service.
pub trait XdsRequest: Sized + Send + 'static {
    type Response: std::fmt::Debug;

    fn open(
        channel: Channel,
        service: Service,
        requests: UnboundedReceiverStream<Self>,
    ) -> impl Future<Output = Result<tonic::Response<Streaming<Self::Response>>, tonic::Status>>;
}

fn ads_client(channel: Channel) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

fn eds_client(channel: Channel) -> EndpointDiscoveryServiceClient<Channel> {
    EndpointDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX)
}

impl XdsRequest for DiscoveryRequest {
    type Response = DiscoveryResponse;

    async fn open(
        channel: Channel,
        service: Service,
        requests: UnboundedReceiverStream<Self>,
    ) -> Result<tonic::Response<Streaming<DiscoveryResponse>>, tonic::Status> {
        match service {
            Service::Ads => {
                ads_client(channel)
                    .stream_aggregated_resources(requests)
                    .await
            }
            Service::Eds => eds_client(channel).stream_endpoints(requests).await,
        }
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    type Response = DeltaDiscoveryResponse;

    async fn open(
        channel: Channel,
        service: Service,
        requests: UnboundedReceiverStream<Self>,
    ) -> Result<tonic::Response<Streaming<DeltaDiscoveryResponse>>, tonic::Status> {
        match service {
            Service::Ads => {
                ads_client(channel)
                    .delta_aggregated_resources(requests)
                    .await
            }
            Service::Eds => eds_client(channel).delta_endpoints(requests).await,
        }
    }
}

/// A raw xDS client on one stream, speaking as the node it was opened for.
pub struct XdsClient<R: XdsRequest> {
    requests: mpsc::UnboundedSender<R>,
    responses: Streaming<R::Response>,
    node: Node,
}

/// A raw state-of-the-world client (ADS or EDS).
pub type SotwClient = XdsClient<DiscoveryRequest>;
/// A raw delta client (ADS or EDS).
pub type DeltaClient = XdsClient<DeltaDiscoveryRequest>;

impl<R: XdsRequest> XdsClient<R> {
    pub async fn ads(url: &str, node_id: &str) -> Self {
        Self::open(channel(url).await, Service::Ads, node_id)
            .await
            .expect("stream opens")
    }

    pub async fn eds(url: &str, node_id: &str) -> Self {
        Self::open(channel(url).await, Service::Eds, node_id)
            .await
            .expect("stream opens")
    }

    /// Opens a stream on `channel`; the error is the server's refusal.
    pub async fn open(
        channel: Channel,
        service: Service,
        node_id: &str,
    ) -> Result<Self, tonic::Status> {
        let (requests, rx) = mpsc::unbounded_channel();
        let responses = R::open(channel, service, UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self {
            requests,
            responses,
            node: node(node_id),
        })
    }

    pub fn send(&self, request: R) {
        self.requests.send(request).expect("stream open");
    }

    pub async fn recv(&mut self) -> R::Response {
        self.next()
            .await
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// The next response, `None` if the stream ended, or its error status.
    pub async fn next(&mut self) -> Result<Option<R::Response>, tonic::Status> {
        tokio::time::timeout(HANG_GUARD, self.responses.message())
            .await
            .expect("a response arrives")
    }

    /// Waits for the stream to end and returns its status.
    pub async fn ended(&mut self) -> tonic::Status {
        match tokio::time::timeout(HANG_GUARD, self.responses.message())
            .await
            .expect("the stream ends")
        {
            Err(status) => status,
            Ok(Some(response)) => panic!("unexpected response {response:?}"),
            Ok(None) => tonic::Status::ok(""),
        }
    }
}

/// Envoy's way of saying it rejected a response.
fn rejection(message: &str) -> rpc::Status {
    rpc::Status {
        code: 3,
        message: message.to_owned(),
        ..rpc::Status::default()
    }
}

impl SotwClient {
    /// The first request of a type (carries the node).
    pub fn subscribe(&self, resource_type: ResourceType, names: &[&str]) {
        self.send(DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: resource_type.type_url().to_owned(),
            resource_names: strings(names),
            ..DiscoveryRequest::default()
        });
    }

    /// ACKs `response`, keeping (or changing to) `names`.
    pub fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: response.version_info.clone(),
            type_url: response.type_url.clone(),
            resource_names: strings(names),
            response_nonce: response.nonce.clone(),
            ..DiscoveryRequest::default()
        });
    }

    /// NACKs `response` while running `running_version`.
    pub fn nack(
        &self,
        response: &DiscoveryResponse,
        running_version: &str,
        names: &[&str],
        message: &str,
    ) {
        self.send(DiscoveryRequest {
            version_info: running_version.to_owned(),
            type_url: response.type_url.clone(),
            resource_names: strings(names),
            response_nonce: response.nonce.clone(),
            error_detail: Some(rejection(message)),
            ..DiscoveryRequest::default()
        });
    }
}

impl DeltaClient {
    /// The first request of a type (carries the node).
    pub fn subscribe(&self, resource_type: ResourceType, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: resource_type.type_url().to_owned(),
            resource_names_subscribe: strings(names),
            ..DeltaDiscoveryRequest::default()
        });
    }

    pub fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        });
    }

    pub fn nack(&self, response: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(rejection(message)),
            ..DeltaDiscoveryRequest::default()
        });
    }
}

/// Polls `condition` until it holds; fails after [`HANG_GUARD`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
