//! The incremental (delta) protocol for one stream.
//!
//! Differences from state of the world that shape this module:
//! - Subscriptions change by increments, so every request's subscribe and
//!   unsubscribe lists are applied, even when its nonce is stale (dropping
//!   them would lose the change for good).
//! - Responses are not serialised: several may be in flight, each ACKed or
//!   NACKed by its own nonce. A nonce we did not send, or already saw
//!   answered, is stale; its ACK/NACK part is ignored.
//! - Removal is explicit (`removed_resources`), and a reconnecting client
//!   says what it holds (`initial_resource_versions`), so it is sent only
//!   what differs.

use std::collections::VecDeque;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::Status;

use crate::cache::Snapshot;
use crate::codec::DeltaResponse;
use crate::protocol::{PerType, Protocol, Reply, TypeWatch};
use crate::status::Rejection;
use crate::subscription::{Subscription, WILDCARD};
use crate::tracker::{Mode, Tracker};
use crate::version::Version;

/// Responses per type remembered for their ACK; a client that never
/// answers cannot grow this without bound.
const MAX_OUTSTANDING: usize = 64;

pub(crate) type Delta = PerType<DeltaType>;

#[derive(Debug)]
pub(crate) struct DeltaType {
    subscription: Subscription,
    tracker: Tracker,
    /// (nonce, system version) of responses not yet answered, oldest first.
    outstanding: VecDeque<(String, String)>,
    /// The cache version last shown as caught up in the stream's status.
    caught_up: Option<Version>,
    _watch: TypeWatch,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const NAME: &'static str = "delta";

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        _snapshot: &Snapshot,
    ) -> Result<(), Status> {
        let Some(resource_type) = self.ctx.request_type(&request.type_url)? else {
            tracing::warn!(type_url = %request.type_url, "ignoring a request for a type this server does not serve");
            return Ok(());
        };
        let first = !self.types.contains_key(&resource_type);
        let ctx = &mut self.ctx;
        let state = self.types.entry(resource_type).or_insert_with(|| {
            let mut tracker = Tracker::new(resource_type, Mode::Delta);
            tracker.start_delta(&request.initial_resource_versions);
            DeltaType {
                subscription: Subscription::new(ctx.subscriptions.clone(), resource_type),
                tracker,
                outstanding: VecDeque::new(),
                caught_up: None,
                _watch: TypeWatch::new(&ctx.metrics, resource_type),
            }
        });

        if !request.response_nonce.is_empty() {
            let answered = state
                .outstanding
                .iter()
                .position(|(nonce, _)| *nonce == request.response_nonce);
            match answered.and_then(|index| state.outstanding.remove(index)) {
                Some((_, version)) => {
                    if let Some(error) = &request.error_detail {
                        tracing::warn!(
                            %resource_type,
                            rejected_version = %version,
                            error = %error.message,
                            "Envoy rejected a response"
                        );
                        let rejection = Rejection {
                            version,
                            message: error.message.clone(),
                        };
                        ctx.record_reply(resource_type, Reply::Rejected(rejection));
                    } else {
                        tracing::debug!(%resource_type, %version, "acknowledged");
                        ctx.record_reply(resource_type, Reply::Accepted { version });
                    }
                }
                None => {
                    tracing::debug!(
                        %resource_type,
                        stale_nonce = %request.response_nonce,
                        "ignoring the ACK/NACK of an unknown or already answered response"
                    );
                    ctx.metrics.stale_request(resource_type);
                }
            }
        }

        let change = state.subscription.update(
            &request.resource_names_subscribe,
            &request.resource_names_unsubscribe,
            first,
        );
        // Every name in the subscribe list is answered, even one already
        // subscribed: the client may have dropped it and asked again before
        // its unsubscribe reached us (the protocol's "remove then add").
        let requested: Vec<Arc<str>> = request
            .resource_names_subscribe
            .iter()
            .filter(|name| *name != WILDCARD)
            .map(|name| Arc::from(name.as_str()))
            .collect();
        if first {
            state.tracker.subscribed_unless_held(&requested);
        } else if !requested.is_empty() {
            state.tracker.subscribed(&requested);
        }
        state.tracker.unsubscribed(&change.removed);
        if change.wildcard_changed {
            state.tracker.resync();
        }
        if first || !change.is_empty() {
            tracing::debug!(
                %resource_type,
                added = change.added.len(),
                removed = change.removed.len(),
                wildcard = state.subscription.is_wildcard(),
                resuming = request.initial_resource_versions.len(),
                "subscription changed"
            );
            ctx.record_subscription(resource_type, &state.subscription);
        }
        Ok(())
    }

    fn next_wake(&self) -> Option<std::time::Instant> {
        self.types
            .values()
            .filter_map(|state| state.tracker.next_wake())
            .min()
    }

    fn next_response(&mut self, snapshot: &Snapshot) -> Option<DeltaResponse> {
        for (resource_type, state) in &mut self.types {
            let type_snapshot = snapshot.of_type(*resource_type);
            let Some(plan) = state.tracker.plan(type_snapshot, &state.subscription) else {
                self.ctx.record_caught_up(
                    *resource_type,
                    type_snapshot.version,
                    &mut state.caught_up,
                );
                continue;
            };
            state.tracker.record(&plan);
            let nonce = self.ctx.nonce();
            let version = type_snapshot.version.to_string();
            if state.outstanding.len() == MAX_OUTSTANDING {
                state.outstanding.pop_front();
            }
            state
                .outstanding
                .push_back((nonce.clone(), version.clone()));
            self.ctx.record_push(
                *resource_type,
                &version,
                plan.upserts.len() + plan.removals.len(),
                plan.after_write,
            );
            self.ctx
                .record_caught_up(*resource_type, type_snapshot.version, &mut state.caught_up);
            tracing::debug!(
                resource_type = %resource_type,
                %version,
                %nonce,
                resources = plan.upserts.len(),
                removed = plan.removals.len(),
                "sending"
            );
            return Some(DeltaResponse {
                system_version_info: version,
                resources: plan.upserts,
                type_url: resource_type.type_url(),
                removed_resources: plan.removals,
                nonce,
            });
        }
        None
    }
}
