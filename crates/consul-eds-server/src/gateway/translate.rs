//! Route table -> Envoy clusters, listeners and route configurations.
//!
//! The only module of gateway mode that writes protobuf. It is a pure
//! function of the table and the settings: equal inputs build equal
//! resources, so the cache sees no change where there is none.
//!
//! Shape of what is built:
//! - one EDS cluster per routed service (and `<service>/canary` when a
//!   route sends traffic to canary instances), endpoints over ADS;
//! - one listener per declared listener, its HTTP connection manager taking
//!   its routes over RDS from the route configuration of the same name;
//! - one route configuration per listener. Every filter chain of a TLS
//!   listener names that one route configuration, so a request is routed by
//!   its `:authority`, never by the SNI it arrived with: a browser that
//!   coalesces HTTP/2 connections for two hosts sharing a certificate still
//!   reaches the right virtual host.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers as EnvoyCircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection,
    circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiConfigSource, ConfigSource, DataSource, GrpcService,
    HealthCheck, Http2ProtocolOptions, RoutingPriority, RuntimeFractionalPercent, SocketAddress,
    SubstitutionFormatString, TransportSocket, address, api_config_source, config_source,
    data_source, grpc_service, health_check, socket_address, substitution_format_string,
    transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RedirectAction, RetryPolicy, Route, RouteAction as EnvoyRouteAction,
    RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher, redirect_action,
    route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    StdoutAccessLog, stdout_access_log,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{
    CodecClientType, FractionalPercent, TokenBucket, fractional_percent,
};
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration as ProtoDuration, Struct, UInt32Value, Value, value,
};
use prost::{Message, Name};
use route_tags::{
    Backend, ClusterDecl, ClusterOptions, HashKey, HeaderMatch, HostPattern, ListenerTable,
    LoadBalancing, PathMatch, Redirect, RedirectCode, Rewrite, RouteAction, RouteTable, TableRoute,
    UpstreamProtocol, UpstreamTls, VirtualHostTable,
};
use xds_core::{Resource, ResourceError, ResourceType};

use super::cluster_name;

/// Envoy's name for the local rate limit HTTP filter; also the key of its
/// per-route configuration.
pub const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const STDOUT_ACCESS_LOG: &str = "envoy.access_loggers.stdout";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// `ConfigSource.resource_api_version` and `transport_api_version`: V3.
const API_V3: i32 = 2;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retried when a route asks for retries without naming the conditions.
const DEFAULT_RETRY_ON: &str = "5xx,reset,connect-failure";

/// What the translation needs besides the table: where certificates come
/// from and how the gateway's HTTP edge behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateSettings {
    /// The bootstrap cluster serving SDS (certificates are asked for by the
    /// TLS host's name).
    pub sds_cluster: String,
    /// `xff_num_trusted_hops`: proxies in front of Envoy whose
    /// `X-Forwarded-For` entries are trusted (0: Envoy is the edge).
    pub trusted_hops: u32,
    /// How long a TLS listener waits for its certificates before it starts
    /// without them (SDS `initial_fetch_timeout`).
    pub sds_initial_fetch_timeout: Duration,
    /// A client taking longer than this to send its request headers is
    /// disconnected (slowloris).
    pub request_headers_timeout: Duration,
    /// A stream with no activity for this long is reset, unless its route
    /// sets its own `idle_timeout`.
    pub stream_idle_timeout: Duration,
    /// Requests with larger headers are refused with 431.
    pub max_request_headers_kb: u32,
}

impl Default for TranslateSettings {
    fn default() -> Self {
        Self {
            sds_cluster: "sds".to_owned(),
            trusted_hops: 0,
            sds_initial_fetch_timeout: Duration::from_secs(2),
            request_headers_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(300),
            max_request_headers_kb: 60,
        }
    }
}

/// Everything the gateway serves over CDS, LDS and RDS.
#[derive(Debug, Clone, Default, PartialEq)]
///
/// The clusters are not here: they are translated one at a time into their
/// encoded form (`super::clusters`), since a whole set of translated
/// clusters is megabytes of mostly empty fields at a few thousand services.
pub struct GatewayResources {
    /// In the table's listener order.
    pub listeners: Vec<Listener>,
    /// One route configuration per listener in `listeners`, named after
    /// it, already encoded (see [`encoded_route_configuration`]).
    pub routes: Vec<Resource>,
    /// TLS listeners left out because no TLS host is routed on them: with
    /// no certificate to present they would have no filter chain, and Envoy
    /// rejects a listener without one. They appear once a TLS host does.
    pub listeners_without_hosts: Vec<String>,
}

/// The listeners and route configurations serving `table`.
pub fn resources(
    table: &RouteTable,
    settings: &TranslateSettings,
) -> Result<GatewayResources, ResourceError> {
    let options: BTreeMap<&str, &ClusterOptions> = table
        .clusters
        .iter()
        .map(|decl| (decl.service.as_str(), &decl.options))
        .collect();
    let mut resources = GatewayResources::default();
    for listener_table in &table.listeners {
        let spec = &listener_table.listener;
        let Some(listener) = listener(listener_table, settings) else {
            resources.listeners_without_hosts.push(spec.name.clone());
            continue;
        };
        resources.listeners.push(listener);
        resources
            .routes
            .push(encoded_route_configuration(listener_table, &options)?);
    }
    Ok(resources)
}

// ---------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------

/// The names of a service's clusters: the stable one, and the canary one
/// when a route sends traffic to its canaries. Both are built from the same
/// options by [`cluster`].
pub fn cluster_names(decl: &ClusterDecl) -> impl Iterator<Item = String> + '_ {
    std::iter::once(cluster_name(&decl.service, false))
        .chain(decl.canary.then(|| cluster_name(&decl.service, true)))
}

/// One EDS cluster; its endpoints come over ADS under the same name.
pub fn cluster(name: &str, options: &ClusterOptions) -> Cluster {
    let http2 = matches!(
        options.protocol,
        UpstreamProtocol::H2c | UpstreamProtocol::H2 | UpstreamProtocol::Grpc
    );
    let mut typed_extension_protocol_options = HashMap::new();
    if http2 {
        typed_extension_protocol_options.insert(
            HTTP_PROTOCOL_OPTIONS.to_owned(),
            any(&http2_protocol_options()),
        );
    }
    // `h2` is HTTP/2 over TLS by definition, with or without `tls=true`.
    let tls = match (&options.tls, options.protocol) {
        (Some(tls), _) => Some(tls.clone()),
        (None, UpstreamProtocol::H2) => Some(UpstreamTls {
            sni: None,
            ca_file: None,
        }),
        (None, _) => None,
    };
    let (lb_policy, lb_config) = lb_policy(&options.load_balancing);
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            ..cluster::EdsClusterConfig::default()
        }),
        connect_timeout: Some(proto_duration(
            options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )),
        lb_policy: lb_policy as i32,
        lb_config,
        circuit_breakers: circuit_breakers(&options.circuit_breakers),
        outlier_detection: options.outlier_detection.map(|o| EnvoyOutlierDetection {
            consecutive_5xx: Some(UInt32Value {
                value: o.consecutive_5xx,
            }),
            interval: Some(proto_duration(o.interval)),
            base_ejection_time: Some(proto_duration(o.base_ejection_time)),
            max_ejection_percent: Some(UInt32Value {
                value: o.max_ejection_percent,
            }),
            // The percentage caps ejections at a share of the instances:
            // 10 % of fewer than ten is none, so the failing instance of
            // a small service would keep its traffic. One instance may
            // always go, unless the tags forbid ejecting any (0 %).
            always_eject_one_host: Some(BoolValue {
                value: o.max_ejection_percent > 0,
            }),
            ..EnvoyOutlierDetection::default()
        }),
        health_checks: options
            .health_check
            .iter()
            .map(|check| HealthCheck {
                timeout: Some(proto_duration(check.timeout)),
                interval: Some(proto_duration(check.interval)),
                unhealthy_threshold: Some(UInt32Value {
                    value: check.unhealthy_threshold,
                }),
                healthy_threshold: Some(UInt32Value {
                    value: check.healthy_threshold,
                }),
                health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                    health_check::HttpHealthCheck {
                        path: check.path.clone(),
                        // The check speaks the protocol the instances serve.
                        codec_client_type: if http2 {
                            CodecClientType::Http2 as i32
                        } else {
                            CodecClientType::Http1 as i32
                        },
                        ..health_check::HttpHealthCheck::default()
                    },
                )),
                ..HealthCheck::default()
            })
            .collect(),
        transport_socket: tls.map(|tls| upstream_tls(&tls, http2)),
        typed_extension_protocol_options,
        ..Cluster::default()
    }
}

fn http2_protocol_options() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..HttpProtocolOptions::default()
    }
}

fn lb_policy(lb: &LoadBalancing) -> (cluster::LbPolicy, Option<cluster::LbConfig>) {
    match lb {
        LoadBalancing::RoundRobin => (cluster::LbPolicy::RoundRobin, None),
        LoadBalancing::LeastRequest => (cluster::LbPolicy::LeastRequest, None),
        LoadBalancing::Random => (cluster::LbPolicy::Random, None),
        LoadBalancing::Hash { maglev: false, .. } => (cluster::LbPolicy::RingHash, None),
        LoadBalancing::Hash { maglev: true, .. } => (cluster::LbPolicy::Maglev, None),
    }
}

fn circuit_breakers(breakers: &route_tags::CircuitBreakers) -> Option<EnvoyCircuitBreakers> {
    let value = |v: Option<u32>| v.map(|value| UInt32Value { value });
    let route_tags::CircuitBreakers {
        max_connections,
        max_pending_requests,
        max_requests,
        max_retries,
        max_connections_per_endpoint,
    } = *breakers;
    let any_default = max_connections.is_some()
        || max_pending_requests.is_some()
        || max_requests.is_some()
        || max_retries.is_some();
    if !any_default && max_connections_per_endpoint.is_none() {
        // Envoy's own defaults apply.
        return None;
    }
    let thresholds = any_default
        .then(|| circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: value(max_connections),
            max_pending_requests: value(max_pending_requests),
            max_requests: value(max_requests),
            max_retries: value(max_retries),
            ..circuit_breakers::Thresholds::default()
        })
        .into_iter()
        .collect();
    // Envoy reads only `max_connections` of a per-host threshold.
    let per_host_thresholds = max_connections_per_endpoint
        .map(|limit| circuit_breakers::Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: value(Some(limit)),
            ..circuit_breakers::Thresholds::default()
        })
        .into_iter()
        .collect();
    Some(EnvoyCircuitBreakers {
        thresholds,
        per_host_thresholds,
    })
}

fn upstream_tls(tls: &UpstreamTls, http2: bool) -> TransportSocket {
    let validation = tls.ca_file.as_ref().map(|ca_file| {
        common_tls_context::ValidationContextType::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename(ca_file.clone())),
                ..DataSource::default()
            }),
            // A CA alone proves only that some certificate of that CA
            // answered; with an SNI the instance must also hold that name.
            match_typed_subject_alt_names: tls
                .sni
                .iter()
                .map(|sni| SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Dns as i32,
                    matcher: Some(exact(sni)),
                    ..SubjectAltNameMatcher::default()
                })
                .collect(),
            ..CertificateValidationContext::default()
        })
    });
    let context = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: if http2 {
                vec!["h2".to_owned()]
            } else {
                vec!["http/1.1".to_owned()]
            },
            validation_context_type: validation,
            ..CommonTlsContext::default()
        }),
        sni: tls.sni.clone().unwrap_or_default(),
        ..UpstreamTlsContext::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

// ---------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------

/// The listener for `table`; `None` for a TLS listener with no TLS host.
fn listener(table: &ListenerTable, settings: &TranslateSettings) -> Option<Listener> {
    let spec = &table.listener;
    let hcm_filter = Filter {
        name: HCM_FILTER.to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(any(
            &http_connection_manager(&spec.name, settings),
        ))),
    };
    let mut listener = Listener {
        name: spec.name.clone(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: spec.host.clone(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    spec.port,
                ))),
                ..SocketAddress::default()
            })),
        }),
        ..Listener::default()
    };
    if !spec.tls {
        listener.filter_chains = vec![FilterChain {
            filters: vec![hcm_filter],
            ..FilterChain::default()
        }];
        return Some(listener);
    }
    let hosts: Vec<&HostPattern> = table.tls_hosts().collect();
    let first = hosts.first()?;
    listener.listener_filters = vec![ListenerFilter {
        name: TLS_INSPECTOR.to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }];
    listener.filter_chains = hosts
        .iter()
        .map(|host| FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                // `*.example.com` is Envoy's wildcard SNI match; an exact
                // name of the same domain wins over it.
                server_names: vec![host.domain().to_owned()],
                ..FilterChainMatch::default()
            }),
            filters: vec![hcm_filter.clone()],
            transport_socket: Some(downstream_tls(host.domain(), settings)),
            ..FilterChain::default()
        })
        .collect();
    // Clients sending no SNI, or a name no chain holds (an IP address, an
    // old client), still get a TLS handshake: with the first host's
    // certificate, the same choice every time for the same table. Their
    // request is then routed by its `:authority` like any other.
    listener.default_filter_chain = Some(FilterChain {
        name: "default".to_owned(),
        filters: vec![hcm_filter],
        transport_socket: Some(downstream_tls(first.domain(), settings)),
        ..FilterChain::default()
    });
    Some(listener)
}

fn downstream_tls(secret: &str, settings: &TranslateSettings) -> TransportSocket {
    let sds = ConfigSource {
        resource_api_version: API_V3,
        initial_fetch_timeout: Some(proto_duration(settings.sds_initial_fetch_timeout)),
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
            ApiConfigSource {
                api_type: api_config_source::ApiType::Grpc as i32,
                transport_api_version: API_V3,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                        grpc_service::EnvoyGrpc {
                            cluster_name: settings.sds_cluster.clone(),
                            ..grpc_service::EnvoyGrpc::default()
                        },
                    )),
                    ..GrpcService::default()
                }],
                ..ApiConfigSource::default()
            },
        )),
        ..ConfigSource::default()
    };
    let context = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: secret.to_owned(),
                sds_config: Some(sds),
            }],
            alpn_protocols: vec!["h2".to_owned(), "http/1.1".to_owned()],
            ..CommonTlsContext::default()
        }),
        ..DownstreamTlsContext::default()
    };
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&context))),
    }
}

fn http_connection_manager(listener: &str, settings: &TranslateSettings) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: listener.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: listener.to_owned(),
        })),
        // Envoy is the edge: the client address is the peer's, less the
        // trusted proxies in front of it.
        use_remote_address: Some(BoolValue { value: true }),
        xff_num_trusted_hops: settings.trusted_hops,
        request_headers_timeout: Some(proto_duration(settings.request_headers_timeout)),
        stream_idle_timeout: Some(proto_duration(settings.stream_idle_timeout)),
        max_request_headers_kb: Some(UInt32Value {
            value: settings.max_request_headers_kb,
        }),
        // Routes match the path a backend would see: `/a/../api` and
        // `//api` are `/api`, and `%2F` cannot smuggle a segment past a
        // prefix match.
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect as i32,
        access_log: vec![json_access_log()],
        http_filters: vec![
            // Empty here: it limits only routes carrying a per-route
            // configuration (`rate_limit=`).
            http_filter_of(
                LOCAL_RATE_LIMIT_FILTER,
                &LocalRateLimit {
                    stat_prefix: "http_local_rate_limit".to_owned(),
                    ..LocalRateLimit::default()
                },
            ),
            http_filter_of(ROUTER_FILTER, &Router::default()),
        ],
        ..HttpConnectionManager::default()
    }
}

fn http_filter_of<M: Message + Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(config))),
        ..HttpFilter::default()
    }
}

/// The access log's JSON fields: key and Envoy command operator.
const ACCESS_LOG_FIELDS: [(&str, &str); 16] = [
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("status", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration_ms", "%DURATION%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("route", "%ROUTE_NAME%"),
    ("client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
];

/// One JSON object per request on Envoy's stdout.
fn json_access_log() -> AccessLog {
    AccessLog {
        name: STDOUT_ACCESS_LOG.to_owned(),
        config_type: Some(access_log::ConfigType::TypedConfig(Any {
            type_url: StdoutAccessLog::type_url(),
            value: stdout_json_log_bytes(&ACCESS_LOG_FIELDS),
        })),
        ..AccessLog::default()
    }
}

/// The encoded `StdoutAccessLog` with a `json_format` of `fields`, in a
/// fixed order.
///
/// `google.protobuf.Struct` is a map, which prost writes in `HashMap`
/// order: a different byte string on every build, so every publish would
/// look like a changed listener to the cache and to Envoy, which drains a
/// changed listener's connections. Instead each field is encoded as a
/// `StdoutAccessLog` of its own and the encodings are concatenated in the
/// given order: protobuf parses concatenated messages as one message whose
/// nested messages and map entries are merged, so Envoy reads the whole
/// format while the bytes stay the same for the same fields.
fn stdout_json_log_bytes(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (key, operator) in fields {
        let json = Struct {
            fields: HashMap::from([(
                (*key).to_owned(),
                Value {
                    kind: Some(value::Kind::StringValue((*operator).to_owned())),
                },
            )]),
        };
        let stdout = StdoutAccessLog {
            access_log_format: Some(stdout_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::JsonFormat(json)),
                    ..SubstitutionFormatString::default()
                },
            )),
        };
        bytes.extend(stdout.encode_to_vec());
    }
    bytes
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

/// `RouteConfiguration.virtual_hosts` in Envoy's route.proto.
const VIRTUAL_HOSTS_FIELD: u32 = 2;

/// A listener's route configuration, encoded one virtual host at a time.
///
/// The bytes are those of encoding [`route_configuration`] (prost writes
/// fields in field-number order, and `virtual_hosts`, field 2, comes
/// between the name and every other field), but the protobuf of all the
/// virtual hosts is never held at once: at 5,000 hosts it is megabytes for
/// a message that encodes to a few hundred kilobytes.
fn encoded_route_configuration(
    table: &ListenerTable,
    clusters: &BTreeMap<&str, &ClusterOptions>,
) -> Result<Resource, ResourceError> {
    let name = RouteConfiguration {
        name: table.listener.name.clone(),
        ..RouteConfiguration::default()
    };
    let mut value = name.encode_to_vec();
    for vh in &table.virtual_hosts {
        prost::encoding::message::encode(
            VIRTUAL_HOSTS_FIELD,
            &virtual_host(vh, clusters),
            &mut value,
        );
    }
    value.extend_from_slice(&route_configuration_settings().encode_to_vec());
    let any = Any {
        type_url: ResourceType::Route.type_url().to_owned(),
        value,
    };
    Resource::from_typed_any(ResourceType::Route, &table.listener.name, &any)
}

/// Everything of a route configuration but its name and virtual hosts.
fn route_configuration_settings() -> RouteConfiguration {
    RouteConfiguration {
        // `Host: shop.example.com:8443` is the host `shop.example.com`.
        ignore_port_in_host_matching: true,
        ..RouteConfiguration::default()
    }
}

/// The whole message [`encoded_route_configuration`] writes piecewise.
#[cfg(test)]
fn route_configuration(
    table: &ListenerTable,
    clusters: &BTreeMap<&str, &ClusterOptions>,
) -> RouteConfiguration {
    RouteConfiguration {
        name: table.listener.name.clone(),
        virtual_hosts: table
            .virtual_hosts
            .iter()
            .map(|vh| virtual_host(vh, clusters))
            .collect(),
        ..route_configuration_settings()
    }
}

fn virtual_host(vh: &VirtualHostTable, clusters: &BTreeMap<&str, &ClusterOptions>) -> VirtualHost {
    VirtualHost {
        name: vh.host.domain().to_owned(),
        domains: vec![vh.host.domain().to_owned()],
        routes: vh.routes.iter().map(|r| route(r, clusters)).collect(),
        ..VirtualHost::default()
    }
}

/// One table route as an Envoy route.
pub fn route(table_route: &TableRoute, clusters: &BTreeMap<&str, &ClusterOptions>) -> Route {
    let options = &table_route.options;
    let action = match &table_route.action {
        RouteAction::Forward { backends } => {
            route::Action::Route(forward(table_route, backends, clusters))
        }
        RouteAction::Redirect(redirect) => route::Action::Redirect(redirect_action(redirect)),
        RouteAction::RedirectToHttps => route::Action::Redirect(RedirectAction {
            scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
                true,
            )),
            // 308 keeps the method and body, unlike 301.
            response_code: redirect_action::RedirectResponseCode::PermanentRedirect as i32,
            ..RedirectAction::default()
        }),
    };
    let mut typed_per_filter_config = HashMap::new();
    // A redirect answers from Envoy itself, but the filter runs before the
    // router: `rate_limit=` bounds a route's answers whatever they are.
    if let Some(limit) = options.rate_limit {
        typed_per_filter_config.insert(
            LOCAL_RATE_LIMIT_FILTER.to_owned(),
            any(&local_rate_limit(table_route, limit)),
        );
    }
    Route {
        name: route_name(table_route),
        r#match: Some(route_match(&table_route.path, options)),
        action: Some(action),
        typed_per_filter_config,
        ..Route::default()
    }
}

fn route_name(table_route: &TableRoute) -> String {
    format!("{}:{}", table_route.service, table_route.route_name)
}

fn route_match(path: &PathMatch, options: &route_tags::RouteOptions) -> RouteMatch {
    let path_specifier = match path {
        PathMatch::Exact(path) => route_match::PathSpecifier::Path(path.clone()),
        PathMatch::Prefix(prefix) => {
            // `path_separated_prefix` refuses a trailing slash; `/api/` and
            // `/api` select the same segments, and `/` is everything.
            let trimmed = prefix.trim_end_matches('/');
            if trimmed.is_empty() {
                route_match::PathSpecifier::Prefix("/".to_owned())
            } else {
                route_match::PathSpecifier::PathSeparatedPrefix(trimmed.to_owned())
            }
        }
        PathMatch::Regex(pattern) => route_match::PathSpecifier::SafeRegex(regex(pattern)),
    };
    let mut headers: Vec<HeaderMatcher> = options.headers.iter().map(header_matcher).collect();
    if !options.methods.is_empty() {
        // One route for several methods: a full-match alternation on the
        // `:method` pseudo-header.
        let alternatives: Vec<String> = options
            .methods
            .iter()
            .map(|method| regex::escape(method))
            .collect();
        headers.push(HeaderMatcher {
            name: ":method".to_owned(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(
                        &alternatives.join("|"),
                    ))),
                    ..StringMatcher::default()
                },
            )),
            ..HeaderMatcher::default()
        });
    }
    RouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        ..RouteMatch::default()
    }
}

fn header_matcher(header: &HeaderMatch) -> HeaderMatcher {
    let specifier = match &header.value {
        Some(value) => header_matcher::HeaderMatchSpecifier::StringMatch(exact(value)),
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: header.name.clone(),
        header_match_specifier: Some(specifier),
        ..HeaderMatcher::default()
    }
}

fn forward(
    table_route: &TableRoute,
    backends: &[Backend],
    clusters: &BTreeMap<&str, &ClusterOptions>,
) -> EnvoyRouteAction {
    let options = &table_route.options;
    let cluster_specifier = match backends {
        [single] => {
            route_action::ClusterSpecifier::Cluster(cluster_name(&single.service, single.canary))
        }
        several => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: several
                .iter()
                .map(|backend| weighted_cluster::ClusterWeight {
                    name: cluster_name(&backend.service, backend.canary),
                    weight: Some(UInt32Value {
                        value: backend.weight.max(1),
                    }),
                    ..weighted_cluster::ClusterWeight::default()
                })
                .collect(),
            ..WeightedCluster::default()
        }),
    };
    let mut action = EnvoyRouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: options.timeout.map(proto_duration),
        idle_timeout: options.idle_timeout.map(proto_duration),
        hash_policy: hash_policy(backends, clusters),
        ..EnvoyRouteAction::default()
    };
    if let Some(rewrite) = &options.rewrite {
        match path_rewrite(&table_route.path, rewrite) {
            PathRewrite::Regex(rewrite) => action.regex_rewrite = Some(rewrite),
            PathRewrite::Prefix(prefix) => action.prefix_rewrite = prefix,
        }
    }
    if options.retries.is_some() || !options.retry_on.is_empty() {
        action.retry_policy = Some(RetryPolicy {
            retry_on: if options.retry_on.is_empty() {
                DEFAULT_RETRY_ON.to_owned()
            } else {
                options.retry_on.join(",")
            },
            num_retries: options.retries.map(|value| UInt32Value { value }),
            ..RetryPolicy::default()
        });
    }
    if options.websocket {
        action.upgrade_configs = vec![route_action::UpgradeConfig {
            upgrade_type: "websocket".to_owned(),
            enabled: Some(BoolValue { value: true }),
            ..route_action::UpgradeConfig::default()
        }];
    }
    action
}

enum PathRewrite {
    Regex(RegexMatchAndSubstitute),
    Prefix(String),
}

/// How `rewrite` changes the path of a request `path` matched. Regex
/// rewrites work on the path without its query, which Envoy keeps.
fn path_rewrite(path: &PathMatch, rewrite: &Rewrite) -> PathRewrite {
    match rewrite {
        Rewrite::Strip(prefix) => PathRewrite::Regex(strip_prefix(prefix)),
        Rewrite::Prefix(to) => {
            let to = to.trim_end_matches('/');
            match path {
                // `rewrite=/` removes the prefix: that is a strip.
                PathMatch::Prefix(prefix) if to.is_empty() => {
                    PathRewrite::Regex(strip_prefix(prefix))
                }
                // The matched prefix is replaced at its segment boundary:
                // `/api/x` -> `/v2/x`, `/api` -> `/v2`. Envoy's own
                // `prefix_rewrite` would turn `/x` under prefix `/` into
                // `/v2x`.
                PathMatch::Prefix(prefix) => {
                    let prefix = prefix.trim_end_matches('/');
                    PathRewrite::Regex(RegexMatchAndSubstitute {
                        pattern: Some(regex(&format!("^{}(/.*)?$", regex::escape(prefix)))),
                        substitution: format!("{to}\\1"),
                    })
                }
                // An exact or regex match: the whole matched path is replaced.
                PathMatch::Exact(_) | PathMatch::Regex(_) => {
                    PathRewrite::Prefix(if to.is_empty() {
                        "/".to_owned()
                    } else {
                        to.to_owned()
                    })
                }
            }
        }
        Rewrite::Regex {
            pattern,
            substitution,
        } => PathRewrite::Regex(RegexMatchAndSubstitute {
            pattern: Some(regex(pattern)),
            substitution: substitution.clone(),
        }),
    }
}

/// `strip=/api`: `/api/x` -> `/x`, `/api` -> `/`, `/apix` untouched.
fn strip_prefix(prefix: &str) -> RegexMatchAndSubstitute {
    let prefix = prefix.trim_end_matches('/');
    RegexMatchAndSubstitute {
        pattern: Some(regex(&format!("^{}(/|$)", regex::escape(prefix)))),
        substitution: "/".to_owned(),
    }
}

/// The hash keys of the hash-balanced clusters the route forwards to, so
/// that a client sticks to one instance.
fn hash_policy(
    backends: &[Backend],
    clusters: &BTreeMap<&str, &ClusterOptions>,
) -> Vec<route_action::HashPolicy> {
    let mut keys: Vec<&HashKey> = Vec::new();
    for backend in backends {
        if let Some(ClusterOptions {
            load_balancing: LoadBalancing::Hash { key, .. },
            ..
        }) = clusters.get(backend.service.as_str()).copied()
            && !keys.contains(&key)
        {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|key| {
            let specifier = match key {
                HashKey::Header(name) => route_action::hash_policy::PolicySpecifier::Header(
                    route_action::hash_policy::Header {
                        header_name: name.clone(),
                        ..route_action::hash_policy::Header::default()
                    },
                ),
                // With a TTL Envoy sets the cookie on a first response, so
                // the next request of that client carries it.
                HashKey::Cookie { name, ttl } => {
                    route_action::hash_policy::PolicySpecifier::Cookie(
                        route_action::hash_policy::Cookie {
                            name: name.clone(),
                            ttl: Some(proto_duration(*ttl)),
                            path: "/".to_owned(),
                            ..route_action::hash_policy::Cookie::default()
                        },
                    )
                }
                HashKey::SourceAddress => {
                    route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                        route_action::hash_policy::ConnectionProperties { source_ip: true },
                    )
                }
            };
            route_action::HashPolicy {
                policy_specifier: Some(specifier),
                ..route_action::HashPolicy::default()
            }
        })
        .collect()
}

fn redirect_action(redirect: &Redirect) -> RedirectAction {
    RedirectAction {
        scheme_rewrite_specifier: redirect
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        host_redirect: redirect.host.clone().unwrap_or_default(),
        port_redirect: redirect.port.map(u32::from).unwrap_or_default(),
        path_rewrite_specifier: redirect
            .path
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        response_code: redirect_code(redirect.code) as i32,
        ..RedirectAction::default()
    }
}

fn redirect_code(code: RedirectCode) -> redirect_action::RedirectResponseCode {
    use redirect_action::RedirectResponseCode as Envoy;
    match code {
        RedirectCode::MovedPermanently => Envoy::MovedPermanently,
        RedirectCode::Found => Envoy::Found,
        RedirectCode::SeeOther => Envoy::SeeOther,
        RedirectCode::TemporaryRedirect => Envoy::TemporaryRedirect,
        RedirectCode::PermanentRedirect => Envoy::PermanentRedirect,
    }
}

/// A token bucket of `burst` tokens refilled by `requests_per_second`
/// every second, enforced on every request of the route.
fn local_rate_limit(table_route: &TableRoute, limit: route_tags::RateLimit) -> LocalRateLimit {
    let always = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        ..RuntimeFractionalPercent::default()
    };
    LocalRateLimit {
        // Stats per route: `<stat_prefix>.http_local_rate_limit.rate_limited`.
        stat_prefix: format!("route_{}", stat_safe(&route_name(table_route))),
        token_bucket: Some(TokenBucket {
            max_tokens: limit.burst.max(1),
            tokens_per_fill: Some(UInt32Value {
                value: limit.requests_per_second.max(1),
            }),
            fill_interval: Some(proto_duration(Duration::from_secs(1))),
        }),
        filter_enabled: Some(always()),
        filter_enforced: Some(always()),
        ..LocalRateLimit::default()
    }
}

/// Envoy splits stat names at dots; keep a name one element.
fn stat_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: API_V3,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

fn regex(pattern: &str) -> RegexMatcher {
    RegexMatcher {
        regex: pattern.to_owned(),
        ..RegexMatcher::default()
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())),
        ..StringMatcher::default()
    }
}

fn proto_duration(duration: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use route_tags::{
        ActiveHealthCheck, CircuitBreakers, ListenerSpec, OutlierDetection, RateLimit, RouteOptions,
    };

    use super::*;

    fn spec(name: &str, port: u16, tls: bool) -> ListenerSpec {
        ListenerSpec {
            name: name.to_owned(),
            host: "127.0.0.1".to_owned(),
            port,
            tls,
        }
    }

    fn forward_to(service: &str) -> RouteAction {
        RouteAction::Forward {
            backends: vec![Backend {
                service: service.to_owned(),
                canary: false,
                weight: 1,
            }],
        }
    }

    fn table_route(service: &str, path: PathMatch, options: RouteOptions) -> TableRoute {
        TableRoute {
            service: service.to_owned(),
            route_name: format!("{path}"),
            path,
            options,
            action: forward_to(service),
            from_any_host: false,
        }
    }

    fn prefix(path: &str) -> PathMatch {
        PathMatch::Prefix(path.to_owned())
    }

    fn exact_host(name: &str) -> HostPattern {
        HostPattern::Exact(name.to_owned())
    }

    fn vhost(host: HostPattern, tls: bool, routes: Vec<TableRoute>) -> VirtualHostTable {
        VirtualHostTable { host, tls, routes }
    }

    fn decl(service: &str, options: ClusterOptions) -> ClusterDecl {
        ClusterDecl {
            service: service.to_owned(),
            options,
            canary: false,
        }
    }

    fn no_clusters() -> BTreeMap<&'static str, &'static ClusterOptions> {
        BTreeMap::new()
    }

    fn decode<M: Message + Default>(any: &Any) -> M {
        M::decode(any.value.as_slice()).expect("decodes")
    }

    fn route_action(route: &Route) -> &EnvoyRouteAction {
        match &route.action {
            Some(route::Action::Route(action)) => action,
            other => panic!("not a forwarding route: {other:?}"),
        }
    }

    fn hcm_of(chain: &FilterChain) -> HttpConnectionManager {
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!("no typed config");
        };
        assert_eq!(any.type_url, HttpConnectionManager::type_url());
        decode(any)
    }

    fn downstream_of(chain: &FilterChain) -> DownstreamTlsContext {
        let socket = chain.transport_socket.as_ref().expect("TLS");
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("no typed config");
        };
        decode(any)
    }

    /// Applies an Envoy regex rewrite the way Envoy does (RE2 and the
    /// `regex` crate agree on these patterns).
    fn apply(rewrite: &RegexMatchAndSubstitute, path: &str) -> String {
        let pattern = rewrite.pattern.as_ref().expect("pattern");
        let re = regex::Regex::new(&pattern.regex).expect("valid regex");
        // Envoy's substitution uses `\1`; the regex crate `${1}`.
        let substitution = rewrite.substitution.replace("\\1", "${1}");
        re.replace_all(path, substitution.as_str()).into_owned()
    }

    #[test]
    fn a_prefix_is_matched_at_segment_boundaries_and_slash_is_everything() {
        let options = RouteOptions::default();
        let m = route_match(&prefix("/api"), &options);
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::PathSeparatedPrefix(
                "/api".to_owned()
            ))
        );
        let m = route_match(&prefix("/api/"), &options);
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::PathSeparatedPrefix(
                "/api".to_owned()
            )),
            "path_separated_prefix refuses a trailing slash"
        );
        let m = route_match(&prefix("/"), &options);
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Prefix("/".to_owned()))
        );
        let m = route_match(&PathMatch::Exact("/healthz".to_owned()), &options);
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Path("/healthz".to_owned()))
        );
        let m = route_match(&PathMatch::Regex("^/v[0-9]+/.*".to_owned()), &options);
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::SafeRegex(regex("^/v[0-9]+/.*")))
        );
    }

    #[test]
    fn headers_and_methods_become_header_matchers() {
        let options = RouteOptions {
            headers: vec![
                HeaderMatch {
                    name: "x-tenant".to_owned(),
                    value: Some("blue".to_owned()),
                },
                HeaderMatch {
                    name: "x-debug".to_owned(),
                    value: None,
                },
            ],
            methods: vec!["GET".to_owned(), "POST".to_owned()],
            ..RouteOptions::default()
        };
        let m = route_match(&prefix("/"), &options);
        assert_eq!(m.headers.len(), 3);
        assert_eq!(
            m.headers[0].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(
                "blue"
            )))
        );
        assert_eq!(
            m.headers[1].header_match_specifier,
            Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true))
        );
        assert_eq!(m.headers[2].name, ":method");
        let Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(re)),
            ..
        })) = &m.headers[2].header_match_specifier
        else {
            panic!("a regex on :method");
        };
        // Envoy full-matches header regexes.
        let full = regex::Regex::new(&format!("^(?:{})$", re.regex)).expect("regex");
        assert!(full.is_match("GET") && full.is_match("POST"));
        assert!(!full.is_match("DELETE") && !full.is_match("GETX"));
    }

    #[test]
    fn strip_removes_the_prefix_at_a_segment_boundary_only() {
        let PathRewrite::Regex(rewrite) =
            path_rewrite(&prefix("/api"), &Rewrite::Strip("/api".to_owned()))
        else {
            panic!("a regex rewrite");
        };
        assert_eq!(apply(&rewrite, "/api/x"), "/x");
        assert_eq!(apply(&rewrite, "/api/x/y"), "/x/y");
        assert_eq!(apply(&rewrite, "/api"), "/");
        assert_eq!(apply(&rewrite, "/api/"), "/");
        assert_eq!(apply(&rewrite, "/apix"), "/apix");
        assert_eq!(apply(&rewrite, "/x/api/y"), "/x/api/y");
    }

    #[test]
    fn strip_escapes_the_prefix() {
        let PathRewrite::Regex(rewrite) =
            path_rewrite(&prefix("/a.b"), &Rewrite::Strip("/a.b".to_owned()))
        else {
            panic!("a regex rewrite");
        };
        assert_eq!(apply(&rewrite, "/a.b/x"), "/x");
        assert_eq!(apply(&rewrite, "/aXb/x"), "/aXb/x");
    }

    #[test]
    fn a_prefix_rewrite_replaces_the_matched_segments() {
        let PathRewrite::Regex(rewrite) =
            path_rewrite(&prefix("/api"), &Rewrite::Prefix("/v2".to_owned()))
        else {
            panic!("a regex rewrite");
        };
        assert_eq!(apply(&rewrite, "/api/x"), "/v2/x");
        assert_eq!(apply(&rewrite, "/api"), "/v2");
        let PathRewrite::Regex(rewrite) =
            path_rewrite(&prefix("/"), &Rewrite::Prefix("/v2/".to_owned()))
        else {
            panic!("a regex rewrite");
        };
        assert_eq!(apply(&rewrite, "/x"), "/v2/x", "not /v2x");
        let PathRewrite::Regex(rewrite) =
            path_rewrite(&prefix("/api"), &Rewrite::Prefix("/".to_owned()))
        else {
            panic!("a regex rewrite");
        };
        assert_eq!(apply(&rewrite, "/api/x"), "/x");
        assert_eq!(apply(&rewrite, "/api"), "/");
    }

    #[test]
    fn a_route_forwards_with_its_options() {
        let options = RouteOptions {
            timeout: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_millis(1500)),
            retries: Some(3),
            websocket: true,
            rewrite: Some(Rewrite::Strip("/api".to_owned())),
            ..RouteOptions::default()
        };
        let built = route(
            &table_route("shop", prefix("/api"), options),
            &no_clusters(),
        );
        let action = route_action(&built);
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster("shop".to_owned()))
        );
        assert_eq!(
            action.timeout,
            Some(ProtoDuration {
                seconds: 5,
                nanos: 0
            })
        );
        assert_eq!(
            action.idle_timeout,
            Some(ProtoDuration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let retry = action.retry_policy.as_ref().expect("retries");
        assert_eq!(retry.retry_on, DEFAULT_RETRY_ON);
        assert_eq!(retry.num_retries, Some(UInt32Value { value: 3 }));
        assert_eq!(action.upgrade_configs[0].upgrade_type, "websocket");
        assert!(action.regex_rewrite.is_some());
        assert!(action.prefix_rewrite.is_empty());
        assert!(built.typed_per_filter_config.is_empty());
    }

    #[test]
    fn several_backends_and_canaries_are_weighted_clusters() {
        let mut r = table_route("blue", prefix("/"), RouteOptions::default());
        r.action = RouteAction::Forward {
            backends: vec![
                Backend {
                    service: "blue".to_owned(),
                    canary: false,
                    weight: 90,
                },
                Backend {
                    service: "blue".to_owned(),
                    canary: true,
                    weight: 10,
                },
            ],
        };
        let built = route(&r, &no_clusters());
        let Some(route_action::ClusterSpecifier::WeightedClusters(weighted)) =
            &route_action(&built).cluster_specifier
        else {
            panic!("weighted clusters");
        };
        let shares: Vec<(&str, u32)> = weighted
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.expect("weight").value))
            .collect();
        assert_eq!(shares, vec![("blue", 90), ("blue/canary", 10)]);
    }

    #[test]
    fn redirects_and_the_https_redirect() {
        let mut r = table_route("old", prefix("/old"), RouteOptions::default());
        r.action = RouteAction::Redirect(Redirect {
            scheme: Some("https".to_owned()),
            host: Some("new.example.com".to_owned()),
            port: Some(8443),
            path: Some("/new".to_owned()),
            code: RedirectCode::Found,
        });
        let Some(route::Action::Redirect(redirect)) = route(&r, &no_clusters()).action else {
            panic!("a redirect");
        };
        assert_eq!(
            redirect.scheme_rewrite_specifier,
            Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(
                "https".to_owned()
            ))
        );
        assert_eq!(redirect.host_redirect, "new.example.com");
        assert_eq!(redirect.port_redirect, 8443);
        assert_eq!(
            redirect.path_rewrite_specifier,
            Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                "/new".to_owned()
            ))
        );
        assert_eq!(
            redirect.response_code,
            redirect_action::RedirectResponseCode::Found as i32
        );

        r.action = RouteAction::RedirectToHttps;
        let Some(route::Action::Redirect(redirect)) = route(&r, &no_clusters()).action else {
            panic!("a redirect");
        };
        assert_eq!(
            redirect.scheme_rewrite_specifier,
            Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true))
        );
        assert_eq!(
            redirect.response_code,
            redirect_action::RedirectResponseCode::PermanentRedirect as i32
        );
    }

    #[test]
    fn a_rate_limited_route_carries_its_token_bucket() {
        let options = RouteOptions {
            rate_limit: Some(RateLimit {
                requests_per_second: 10,
                burst: 20,
            }),
            ..RouteOptions::default()
        };
        let built = route(
            &table_route("shop", prefix("/api"), options),
            &no_clusters(),
        );
        let any = &built.typed_per_filter_config[LOCAL_RATE_LIMIT_FILTER];
        assert_eq!(any.type_url, LocalRateLimit::type_url());
        let limit: LocalRateLimit = decode(any);
        let bucket = limit.token_bucket.expect("bucket");
        assert_eq!(bucket.max_tokens, 20);
        assert_eq!(bucket.tokens_per_fill, Some(UInt32Value { value: 10 }));
        assert_eq!(
            bucket.fill_interval,
            Some(ProtoDuration {
                seconds: 1,
                nanos: 0
            })
        );
        for fraction in [limit.filter_enabled, limit.filter_enforced] {
            let value = fraction.and_then(|f| f.default_value).expect("fraction");
            assert_eq!(value.numerator, 100);
            assert_eq!(
                value.denominator,
                fractional_percent::DenominatorType::Hundred as i32
            );
        }
        assert!(!limit.stat_prefix.contains('.'), "{}", limit.stat_prefix);
    }

    #[test]
    fn a_rate_limited_redirect_carries_its_token_bucket() {
        let options = RouteOptions {
            rate_limit: Some(RateLimit {
                requests_per_second: 1,
                burst: 1,
            }),
            ..RouteOptions::default()
        };
        let mut r = table_route("old", prefix("/"), options);
        r.action = RouteAction::Redirect(Redirect {
            scheme: Some("https".to_owned()),
            host: Some("new.example.com".to_owned()),
            port: None,
            path: None,
            code: RedirectCode::MovedPermanently,
        });
        let built = route(&r, &no_clusters());
        assert!(matches!(built.action, Some(route::Action::Redirect(_))));
        let limit: LocalRateLimit = decode(&built.typed_per_filter_config[LOCAL_RATE_LIMIT_FILTER]);
        assert_eq!(limit.token_bucket.expect("bucket").max_tokens, 1);
    }

    #[test]
    fn routes_to_hash_balanced_clusters_carry_their_hash_key() {
        let sticky = ClusterOptions {
            load_balancing: LoadBalancing::Hash {
                maglev: false,
                key: HashKey::Cookie {
                    name: "session".to_owned(),
                    ttl: Duration::from_secs(3600),
                },
            },
            ..ClusterOptions::default()
        };
        let by_ip = ClusterOptions {
            load_balancing: LoadBalancing::Hash {
                maglev: true,
                key: HashKey::SourceAddress,
            },
            ..ClusterOptions::default()
        };
        let plain = ClusterOptions::default();
        let clusters: BTreeMap<&str, &ClusterOptions> =
            [("sticky", &sticky), ("by-ip", &by_ip), ("plain", &plain)].into();

        let built = route(
            &table_route("sticky", prefix("/"), RouteOptions::default()),
            &clusters,
        );
        let policy = &route_action(&built).hash_policy;
        assert_eq!(policy.len(), 1);
        let Some(route_action::hash_policy::PolicySpecifier::Cookie(cookie)) =
            &policy[0].policy_specifier
        else {
            panic!("a cookie hash");
        };
        assert_eq!(cookie.name, "session");
        assert_eq!(cookie.ttl.map(|t| t.seconds), Some(3600));

        let built = route(
            &table_route("by-ip", prefix("/"), RouteOptions::default()),
            &clusters,
        );
        assert_eq!(
            route_action(&built).hash_policy[0].policy_specifier,
            Some(
                route_action::hash_policy::PolicySpecifier::ConnectionProperties(
                    route_action::hash_policy::ConnectionProperties { source_ip: true }
                )
            )
        );
        let built = route(
            &table_route("plain", prefix("/"), RouteOptions::default()),
            &clusters,
        );
        assert!(route_action(&built).hash_policy.is_empty());
    }

    #[test]
    fn a_cluster_is_eds_over_ads_with_its_options() {
        let options = ClusterOptions {
            protocol: UpstreamProtocol::H2c,
            connect_timeout: Some(Duration::from_secs(2)),
            load_balancing: LoadBalancing::LeastRequest,
            circuit_breakers: CircuitBreakers {
                max_connections: Some(100),
                max_connections_per_endpoint: Some(10),
                ..CircuitBreakers::default()
            },
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 5,
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent: 50,
            }),
            health_check: Some(ActiveHealthCheck {
                path: "/healthz".to_owned(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                unhealthy_threshold: 3,
                healthy_threshold: 2,
            }),
            tls: None,
        };
        let c = cluster("api", &options);
        assert_eq!(c.name, "api");
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        let eds = c.eds_cluster_config.as_ref().expect("eds config");
        assert_eq!(eds.eds_config, Some(ads_config_source()));
        assert_eq!(c.connect_timeout.map(|t| t.seconds), Some(2));
        assert_eq!(c.lb_policy, cluster::LbPolicy::LeastRequest as i32);
        let breakers = c.circuit_breakers.as_ref().expect("breakers");
        assert_eq!(
            breakers.thresholds[0].max_connections,
            Some(UInt32Value { value: 100 })
        );
        assert_eq!(breakers.thresholds[0].max_requests, None);
        assert_eq!(
            breakers.per_host_thresholds[0].max_connections,
            Some(UInt32Value { value: 10 })
        );
        let outlier = c.outlier_detection.as_ref().expect("outlier");
        assert_eq!(outlier.consecutive_5xx, Some(UInt32Value { value: 5 }));
        let Some(health_check::HealthChecker::HttpHealthCheck(http)) =
            &c.health_checks[0].health_checker
        else {
            panic!("an HTTP health check");
        };
        assert_eq!(http.path, "/healthz");
        assert_eq!(http.codec_client_type, CodecClientType::Http2 as i32);
        let protocol: HttpProtocolOptions =
            decode(&c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]);
        assert_eq!(protocol, http2_protocol_options());
        assert!(c.transport_socket.is_none(), "h2c is clear text");
    }

    #[test]
    fn outlier_detection_may_eject_one_instance_of_a_small_service() {
        let with_percent = |max_ejection_percent| ClusterOptions {
            outlier_detection: Some(OutlierDetection {
                consecutive_5xx: 2,
                interval: Duration::from_secs(10),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_percent,
            }),
            ..ClusterOptions::default()
        };
        let always_one = |options: &ClusterOptions| {
            cluster("api", options)
                .outlier_detection
                .expect("outlier")
                .always_eject_one_host
        };
        // 10 % of two instances is no instance: without this Envoy counts
        // an `ejections_overflow` and keeps sending to the failing one.
        assert_eq!(
            always_one(&with_percent(10)),
            Some(BoolValue { value: true })
        );
        assert_eq!(
            always_one(&with_percent(0)),
            Some(BoolValue { value: false }),
            "0 % ejects nothing"
        );
    }

    #[test]
    fn defaults_leave_envoys_own_defaults() {
        let c = cluster("web", &ClusterOptions::default());
        assert_eq!(c.connect_timeout.map(|t| t.seconds), Some(5));
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        assert!(c.circuit_breakers.is_none());
        assert!(c.outlier_detection.is_none());
        assert!(c.health_checks.is_empty());
        assert!(c.typed_extension_protocol_options.is_empty(), "HTTP/1.1");
        assert!(c.transport_socket.is_none());
    }

    fn upstream_of(c: &Cluster) -> UpstreamTlsContext {
        let socket = c.transport_socket.as_ref().expect("TLS");
        assert_eq!(socket.name, TLS_TRANSPORT_SOCKET);
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("typed config");
        };
        decode(any)
    }

    #[test]
    fn h2_is_http2_over_tls_and_tls_carries_sni_and_ca() {
        let c = cluster(
            "grpc",
            &ClusterOptions {
                protocol: UpstreamProtocol::H2,
                ..ClusterOptions::default()
            },
        );
        assert!(
            c.typed_extension_protocol_options
                .contains_key(HTTP_PROTOCOL_OPTIONS)
        );
        let tls = upstream_of(&c);
        let common = tls.common_tls_context.expect("common");
        assert_eq!(common.alpn_protocols, vec!["h2".to_owned()]);

        let c = cluster(
            "secure",
            &ClusterOptions {
                tls: Some(UpstreamTls {
                    sni: Some("backend.internal".to_owned()),
                    ca_file: Some("/etc/ssl/internal-ca.pem".to_owned()),
                }),
                ..ClusterOptions::default()
            },
        );
        let tls = upstream_of(&c);
        assert_eq!(tls.sni, "backend.internal");
        let Some(common_tls_context::ValidationContextType::ValidationContext(validation)) = tls
            .common_tls_context
            .expect("common")
            .validation_context_type
        else {
            panic!("a validation context");
        };
        assert_eq!(
            validation.trusted_ca.and_then(|ca| ca.specifier),
            Some(data_source::Specifier::Filename(
                "/etc/ssl/internal-ca.pem".to_owned()
            ))
        );
        assert_eq!(
            validation.match_typed_subject_alt_names[0].matcher,
            Some(exact("backend.internal"))
        );
    }

    fn tls_table() -> RouteTable {
        let route = |service: &str| table_route(service, prefix("/"), RouteOptions::default());
        RouteTable {
            listeners: vec![
                ListenerTable {
                    listener: spec("web", 8080, false),
                    virtual_hosts: vec![
                        vhost(exact_host("plain.example.com"), false, vec![route("plain")]),
                        vhost(
                            exact_host("shop.example.com"),
                            true,
                            vec![{
                                let mut r = route("shop");
                                r.action = RouteAction::RedirectToHttps;
                                r
                            }],
                        ),
                    ],
                },
                ListenerTable {
                    listener: spec("websecure", 8443, true),
                    virtual_hosts: vec![
                        vhost(HostPattern::Any, false, vec![route("fallback")]),
                        vhost(
                            HostPattern::Wildcard("*.example.com".to_owned()),
                            true,
                            vec![route("wild")],
                        ),
                        vhost(exact_host("shop.example.com"), true, vec![route("shop")]),
                    ],
                },
                ListenerTable {
                    listener: spec("unused-tls", 9443, true),
                    virtual_hosts: vec![],
                },
            ],
            clusters: ["fallback", "plain", "shop", "wild"]
                .into_iter()
                .map(|s| decl(s, ClusterOptions::default()))
                .collect(),
            problems: vec![],
            ..RouteTable::default()
        }
    }

    #[test]
    fn a_tls_listener_has_one_chain_per_tls_host_with_its_sds_certificate() {
        let settings = TranslateSettings {
            sds_cluster: "acme-sds".to_owned(),
            ..TranslateSettings::default()
        };
        let built = built(&tls_table(), &settings);
        let secure = &built.listeners[1];
        assert_eq!(secure.name, "websecure");
        assert_eq!(secure.listener_filters[0].name, TLS_INSPECTOR);
        let server_names: Vec<Vec<String>> = secure
            .filter_chains
            .iter()
            .map(|chain| {
                chain
                    .filter_chain_match
                    .as_ref()
                    .expect("a match")
                    .server_names
                    .clone()
            })
            .collect();
        assert_eq!(
            server_names,
            vec![
                vec!["*.example.com".to_owned()],
                vec!["shop.example.com".to_owned()]
            ],
            "one chain per TLS host, the catch-all host has none"
        );
        let mut all: Vec<&String> = server_names.iter().flatten().collect();
        all.dedup();
        assert_eq!(all.len(), secure.filter_chains.len(), "unique server names");
        for chain in &secure.filter_chains {
            let domain = &chain
                .filter_chain_match
                .as_ref()
                .expect("match")
                .server_names[0];
            let common = downstream_of(chain).common_tls_context.expect("common");
            assert_eq!(
                common.alpn_protocols,
                vec!["h2".to_owned(), "http/1.1".to_owned()]
            );
            let sds = &common.tls_certificate_sds_secret_configs[0];
            assert_eq!(&sds.name, domain, "the certificate is the host's own");
            let source = sds.sds_config.as_ref().expect("sds config");
            assert_eq!(
                source.initial_fetch_timeout,
                Some(proto_duration(settings.sds_initial_fetch_timeout))
            );
            let Some(config_source::ConfigSourceSpecifier::ApiConfigSource(api)) =
                &source.config_source_specifier
            else {
                panic!("an API config source");
            };
            assert_eq!(api.api_type, api_config_source::ApiType::Grpc as i32);
            assert_eq!(
                api.grpc_services[0].target_specifier,
                Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: "acme-sds".to_owned(),
                        ..grpc_service::EnvoyGrpc::default()
                    }
                ))
            );
        }
        let default = secure
            .default_filter_chain
            .as_ref()
            .expect("a default chain");
        assert!(default.filter_chain_match.is_none());
        let common = downstream_of(default).common_tls_context.expect("common");
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name, "*.example.com",
            "the first TLS host's certificate"
        );
        // Every chain routes through the one route configuration.
        for chain in secure.filter_chains.iter().chain([default]) {
            let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                hcm_of(chain).route_specifier
            else {
                panic!("RDS");
            };
            assert_eq!(rds.route_config_name, "websecure");
        }
    }

    fn built(table: &RouteTable, settings: &TranslateSettings) -> GatewayResources {
        resources(table, settings).expect("encodes")
    }

    fn decoded_routes(built: &GatewayResources) -> Vec<RouteConfiguration> {
        built
            .routes
            .iter()
            .map(|resource| decode(&resource.to_any().expect("an Any")))
            .collect()
    }

    #[test]
    fn a_tls_listener_without_tls_hosts_is_left_out() {
        let built = built(&tls_table(), &TranslateSettings::default());
        let listeners: Vec<&str> = built.listeners.iter().map(|l| l.name.as_str()).collect();
        let routes: Vec<&str> = built.routes.iter().map(Resource::name).collect();
        assert_eq!(listeners, vec!["web", "websecure"]);
        assert_eq!(routes, vec!["web", "websecure"]);
        assert_eq!(built.listeners_without_hosts, vec!["unused-tls".to_owned()]);
    }

    #[test]
    fn a_plain_listener_has_one_chain_and_the_edge_settings() {
        let settings = TranslateSettings {
            trusted_hops: 2,
            ..TranslateSettings::default()
        };
        let built = built(&tls_table(), &settings);
        let web = &built.listeners[0];
        assert!(web.listener_filters.is_empty());
        assert!(web.default_filter_chain.is_none());
        assert_eq!(web.filter_chains.len(), 1);
        let chain = &web.filter_chains[0];
        assert!(chain.transport_socket.is_none());
        let hcm = hcm_of(chain);
        assert_eq!(hcm.use_remote_address, Some(BoolValue { value: true }));
        assert_eq!(hcm.xff_num_trusted_hops, 2);
        assert_eq!(hcm.request_headers_timeout.map(|d| d.seconds), Some(10));
        assert_eq!(hcm.max_request_headers_kb, Some(UInt32Value { value: 60 }));
        assert_eq!(hcm.normalize_path, Some(BoolValue { value: true }));
        assert!(hcm.merge_slashes);
        assert_eq!(
            hcm.path_with_escaped_slashes_action,
            http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndRedirect as i32
        );
        assert_eq!(hcm.access_log[0].name, STDOUT_ACCESS_LOG);
        let filters: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(filters, vec![LOCAL_RATE_LIMIT_FILTER, ROUTER_FILTER]);
    }

    #[test]
    fn one_route_configuration_per_listener_with_its_virtual_hosts() {
        let routes = decoded_routes(&built(&tls_table(), &TranslateSettings::default()));
        let secure = &routes[1];
        assert!(secure.ignore_port_in_host_matching);
        let domains: Vec<&str> = secure
            .virtual_hosts
            .iter()
            .map(|vh| vh.domains[0].as_str())
            .collect();
        assert_eq!(domains, vec!["*", "*.example.com", "shop.example.com"]);
        let web = &routes[0];
        let shop = &web.virtual_hosts[1];
        assert_eq!(shop.domains, vec!["shop.example.com".to_owned()]);
        assert!(matches!(
            shop.routes[0].action,
            Some(route::Action::Redirect(_))
        ));
    }

    #[test]
    fn the_access_log_decodes_to_every_json_field() {
        let log = json_access_log();
        let Some(access_log::ConfigType::TypedConfig(any)) = &log.config_type else {
            panic!("typed config");
        };
        let stdout: StdoutAccessLog = decode(any);
        let Some(stdout_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(substitution_format_string::Format::JsonFormat(json)),
            ..
        })) = stdout.access_log_format
        else {
            panic!("a JSON format");
        };
        assert_eq!(json.fields.len(), ACCESS_LOG_FIELDS.len());
        for (key, operator) in ACCESS_LOG_FIELDS {
            assert_eq!(
                json.fields[key].kind,
                Some(value::Kind::StringValue(operator.to_owned())),
                "{key}"
            );
        }
    }

    #[test]
    fn equal_tables_build_equal_bytes() {
        let first = built(&tls_table(), &TranslateSettings::default());
        let second = built(&tls_table(), &TranslateSettings::default());
        let bytes = |r: &GatewayResources| {
            (
                r.listeners
                    .iter()
                    .map(Message::encode_to_vec)
                    .collect::<Vec<_>>(),
                r.routes
                    .iter()
                    .map(|route| route.encoded_any().clone())
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(first, second);
        assert_eq!(bytes(&first), bytes(&second));
    }

    #[test]
    fn a_route_configuration_encoded_piecewise_is_the_whole_message_byte_for_byte() {
        let table = tls_table();
        let options = BTreeMap::new();
        let mut virtual_hosts = 0;
        for listener_table in &table.listeners {
            let whole = route_configuration(listener_table, &options);
            virtual_hosts += whole.virtual_hosts.len();
            let piecewise = encoded_route_configuration(listener_table, &options).expect("encodes");
            let any = piecewise.to_any().expect("an Any");
            assert_eq!(any.type_url, ResourceType::Route.type_url());
            assert_eq!(any.value, whole.encode_to_vec(), "{}", whole.name);
            assert_eq!(piecewise, Resource::encode(&whole).expect("encodes"));
        }
        assert!(virtual_hosts > 3, "{virtual_hosts} virtual hosts compared");
    }
}
