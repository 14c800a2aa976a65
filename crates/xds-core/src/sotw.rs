//! The state-of-the-world protocol for one stream.
//!
//! Per type: the client's subscription, what it holds (the tracker), and
//! the nonce of the latest response. The rules:
//! - Every response carries a fresh nonce. A request quoting any other
//!   nonce answers a superseded response and is ignored entirely: its
//!   resource list may predate what we sent since, and the client will send
//!   an up-to-date one with its next ACK.
//! - One response per type is in flight at a time: the next one waits for
//!   the ACK or NACK of the previous (and so carries everything that changed
//!   meanwhile). Every rejection is therefore seen, logged and counted.
//! - An ACK records the version the client now runs. A NACK is logged with
//!   Envoy's message and counted; what was rejected is not sent again until
//!   the application changes it, and then all of the rejected response the
//!   client lacks is (see the tracker).

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tonic::Status;

use crate::cache::Snapshot;
use crate::codec::SotwResponse;
use crate::protocol::{PerType, Protocol, Reply, TypeWatch};
use crate::status::Rejection;
use crate::subscription::Subscription;
use crate::tracker::{Mode, Tracker};
use crate::version::Version;

pub(crate) type Sotw = PerType<SotwType>;

#[derive(Debug)]
pub(crate) struct SotwType {
    subscription: Subscription,
    tracker: Tracker,
    last_nonce: Option<String>,
    sent_version: String,
    awaiting_reply: bool,
    /// The cache version last shown as caught up in the stream's status.
    caught_up: Option<Version>,
    _watch: TypeWatch,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;
    const NAME: &'static str = "sotw";

    fn on_request(&mut self, request: DiscoveryRequest, snapshot: &Snapshot) -> Result<(), Status> {
        let Some(resource_type) = self.ctx.request_type(&request.type_url)? else {
            tracing::warn!(type_url = %request.type_url, "ignoring a request for a type this server does not serve");
            return Ok(());
        };
        let type_snapshot = snapshot.of_type(resource_type);
        let Some(state) = self.types.get_mut(&resource_type) else {
            let mut subscription = Subscription::new(self.ctx.subscriptions.clone(), resource_type);
            subscription.replace(&request.resource_names);
            let mut tracker = Tracker::new(resource_type, Mode::sotw(resource_type));
            tracker.start_sotw(&request.version_info, type_snapshot, &subscription);
            tracing::debug!(
                %resource_type,
                names = request.resource_names.len(),
                wildcard = subscription.is_wildcard(),
                resuming_version = %request.version_info,
                "subscribed"
            );
            self.ctx.status.update_type(resource_type, |status| {
                status.wildcard = subscription.is_wildcard();
                status.subscribed = subscription.names().count();
                if !request.version_info.is_empty() {
                    status.acked_version = Some(request.version_info.clone());
                }
            });
            self.types.insert(
                resource_type,
                SotwType {
                    subscription,
                    tracker,
                    last_nonce: None,
                    sent_version: String::new(),
                    caught_up: None,
                    awaiting_reply: false,
                    _watch: TypeWatch::new(&self.ctx.metrics, resource_type),
                },
            );
            return Ok(());
        };

        match &state.last_nonce {
            Some(last) if *last == request.response_nonce => {
                state.awaiting_reply = false;
                if let Some(error) = &request.error_detail {
                    tracing::warn!(
                        %resource_type,
                        rejected_version = %state.sent_version,
                        running_version = %request.version_info,
                        error = %error.message,
                        "Envoy rejected a response"
                    );
                    state.tracker.rejected();
                    let rejection = Rejection {
                        version: state.sent_version.clone(),
                        message: error.message.clone(),
                    };
                    self.ctx
                        .record_reply(resource_type, Reply::Rejected(rejection));
                } else {
                    tracing::debug!(%resource_type, version = %request.version_info, "acknowledged");
                    state.tracker.accepted();
                    let version = request.version_info.clone();
                    self.ctx
                        .record_reply(resource_type, Reply::Accepted { version });
                }
            }
            Some(last) => {
                tracing::debug!(
                    %resource_type,
                    stale_nonce = %request.response_nonce,
                    current_nonce = %last,
                    "ignoring a request answering a superseded response"
                );
                self.ctx.metrics.stale_request(resource_type);
                return Ok(());
            }
            // Nothing sent yet: a request that only updates the names.
            None => {}
        }

        let change = state.subscription.replace(&request.resource_names);
        if !change.is_empty() {
            state.tracker.unsubscribed(&change.removed);
            state.tracker.subscribed(&change.added);
            if change.wildcard_changed {
                state.tracker.resync();
            }
            tracing::debug!(
                %resource_type,
                added = change.added.len(),
                removed = change.removed.len(),
                wildcard = state.subscription.is_wildcard(),
                "subscription changed"
            );
            self.ctx
                .record_subscription(resource_type, &state.subscription);
        }
        Ok(())
    }

    fn next_wake(&self) -> Option<std::time::Instant> {
        // A type awaiting the client's answer sends nothing, stand-in or
        // not, until that answer: its due stand-ins are no reason to wake,
        // and waking for them would spin.
        self.types
            .values()
            .filter(|state| !state.awaiting_reply)
            .filter_map(|state| state.tracker.next_wake())
            .min()
    }

    fn next_response(&mut self, snapshot: &Snapshot) -> Option<SotwResponse> {
        for (resource_type, state) in &mut self.types {
            if state.awaiting_reply {
                continue;
            }
            let type_snapshot = snapshot.of_type(*resource_type);
            let Some(plan) = state.tracker.plan(type_snapshot, &state.subscription) else {
                self.ctx.record_caught_up(
                    *resource_type,
                    type_snapshot.version,
                    &mut state.caught_up,
                );
                continue;
            };
            let resources = if resource_type.is_full_state() {
                let all = Tracker::full_state(type_snapshot, &state.subscription);
                state.tracker.record_full_state(&all);
                all
            } else {
                state.tracker.record(&plan);
                plan.upserts
            };
            let nonce = self.ctx.nonce();
            let version = type_snapshot.version.to_string();
            state.last_nonce = Some(nonce.clone());
            state.sent_version.clone_from(&version);
            state.awaiting_reply = true;
            self.ctx
                .record_push(*resource_type, &version, resources.len(), plan.after_write);
            self.ctx
                .record_caught_up(*resource_type, type_snapshot.version, &mut state.caught_up);
            tracing::debug!(
                resource_type = %resource_type,
                %version,
                %nonce,
                resources = resources.len(),
                "sending"
            );
            return Some(SotwResponse {
                version_info: version,
                resources,
                type_url: resource_type.type_url(),
                nonce,
            });
        }
        None
    }
}
