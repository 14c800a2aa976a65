//! The wire side: discovery responses written from shared bytes, the gRPC
//! response body that carries them, and the request decoder.
//!
//! Why not tonic's generated servers and codec: a `prost` response owns its
//! `Any`s, so pushing one resource to a thousand streams would copy it a
//! thousand times before encoding, and tonic's per-stream encode buffer
//! keeps the capacity of the largest message a stream ever sent (the
//! initial response: every cluster) for as long as the stream lives; with a
//! thousand Envoys that is most of the server's memory. Here each response
//! is encoded when it is sent into a buffer that is freed once written, and
//! resources above [`SHARE_THRESHOLD`] are not copied at all: their cached
//! bytes are handed to HTTP/2 as they are. The wire format is exactly that
//! of Envoy's messages (tests decode it with the generated types).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic::codegen::http::HeaderMap;

use crate::resource::Resource;

/// Resources at least this large are sent from the cache's bytes instead
/// of being copied into the response buffer. Below it, a copy is cheaper
/// than an extra HTTP/2 DATA frame.
pub(crate) const SHARE_THRESHOLD: usize = 8 * 1024;

/// gRPC length-prefixed message header: compression flag and length.
const GRPC_HEADER_LEN: usize = 5;

/// A message this module can write.
pub(crate) trait EncodeMessage {
    fn encoded_len(&self) -> usize;
    /// Bytes of the message that [`Chunks`] will share rather than copy.
    fn shared_len(&self) -> usize;
    fn encode(&self, out: &mut Chunks);
}

/// A message as a sequence of byte chunks: copied small parts interleaved
/// with shared large ones.
#[derive(Debug)]
pub(crate) struct Chunks {
    done: Vec<Bytes>,
    current: BytesMut,
}

impl Chunks {
    fn with_capacity(copied: usize) -> Self {
        Self {
            done: Vec::new(),
            current: BytesMut::with_capacity(copied),
        }
    }

    fn put_shared(&mut self, bytes: &Bytes) {
        if bytes.len() >= SHARE_THRESHOLD {
            if !self.current.is_empty() {
                self.done.push(self.current.split().freeze());
            }
            self.done.push(bytes.clone());
        } else {
            self.current.put_slice(bytes);
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.done.push(self.current.freeze());
        }
        self.done
    }
}

/// `envoy.service.discovery.v3.DiscoveryResponse`.
#[derive(Debug, Clone)]
pub(crate) struct SotwResponse {
    pub(crate) version_info: String,
    pub(crate) resources: Vec<Resource>,
    pub(crate) type_url: &'static str,
    pub(crate) nonce: String,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
#[derive(Debug, Clone)]
pub(crate) struct DeltaResponse {
    pub(crate) system_version_info: String,
    pub(crate) resources: Vec<Resource>,
    pub(crate) type_url: &'static str,
    pub(crate) removed_resources: Vec<Arc<str>>,
    pub(crate) nonce: String,
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// proto3 omits empty strings.
fn string_field_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        bytes_field_len(tag, value.len())
    }
}

fn put_field_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_string_field(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_field_header(tag, value.len(), buf);
        buf.put_slice(value);
    }
}

fn shared(resources: &[Resource]) -> usize {
    resources
        .iter()
        .map(|r| r.encoded_any().len())
        .filter(|len| *len >= SHARE_THRESHOLD)
        .sum()
}

impl EncodeMessage for SotwResponse {
    fn encoded_len(&self) -> usize {
        string_field_len(1, self.version_info.as_bytes())
            + self
                .resources
                .iter()
                .map(|r| bytes_field_len(2, r.encoded_any().len()))
                .sum::<usize>()
            + string_field_len(4, self.type_url.as_bytes())
            + string_field_len(5, self.nonce.as_bytes())
    }

    fn shared_len(&self) -> usize {
        shared(&self.resources)
    }

    fn encode(&self, out: &mut Chunks) {
        put_string_field(1, self.version_info.as_bytes(), &mut out.current);
        for resource in &self.resources {
            put_field_header(2, resource.encoded_any().len(), &mut out.current);
            out.put_shared(resource.encoded_any());
        }
        put_string_field(4, self.type_url.as_bytes(), &mut out.current);
        put_string_field(5, self.nonce.as_bytes(), &mut out.current);
    }
}

/// Length of one `envoy.service.discovery.v3.Resource` (without its key).
fn delta_resource_len(resource: &Resource) -> usize {
    bytes_field_len(1, 16)
        + bytes_field_len(2, resource.encoded_any().len())
        + string_field_len(3, resource.name().as_bytes())
}

impl EncodeMessage for DeltaResponse {
    fn encoded_len(&self) -> usize {
        string_field_len(1, self.system_version_info.as_bytes())
            + self
                .resources
                .iter()
                .map(|r| bytes_field_len(2, delta_resource_len(r)))
                .sum::<usize>()
            + string_field_len(4, self.type_url.as_bytes())
            + string_field_len(5, self.nonce.as_bytes())
            + self
                .removed_resources
                .iter()
                .map(|name| bytes_field_len(6, name.len()))
                .sum::<usize>()
    }

    fn shared_len(&self) -> usize {
        shared(&self.resources)
    }

    fn encode(&self, out: &mut Chunks) {
        put_string_field(1, self.system_version_info.as_bytes(), &mut out.current);
        for resource in &self.resources {
            put_field_header(2, delta_resource_len(resource), &mut out.current);
            put_string_field(1, &resource.version().to_hex(), &mut out.current);
            put_field_header(2, resource.encoded_any().len(), &mut out.current);
            out.put_shared(resource.encoded_any());
            put_string_field(3, resource.name().as_bytes(), &mut out.current);
        }
        put_string_field(4, self.type_url.as_bytes(), &mut out.current);
        put_string_field(5, self.nonce.as_bytes(), &mut out.current);
        for name in &self.removed_resources {
            put_string_field(6, name.as_bytes(), &mut out.current);
        }
    }
}

/// One message framed for gRPC: the 5-byte header, then the message.
fn frame_message(message: &impl EncodeMessage, len: usize) -> Vec<Bytes> {
    let mut out = Chunks::with_capacity(GRPC_HEADER_LEN + len - message.shared_len());
    out.current.put_u8(0); // not compressed
    // `len` was checked against the message size limit, itself a `usize`
    // far below 4 GiB in any sane configuration; saturate rather than wrap.
    out.current.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode(&mut out);
    out.finish()
}

/// The HTTP body of a streaming gRPC response: each message from
/// `responses`, then trailers with the final status.
pub(crate) struct ResponseBody<M> {
    responses: Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>,
    pending: VecDeque<Bytes>,
    max_message_size: usize,
    finished: bool,
}

impl<M> ResponseBody<M> {
    pub(crate) fn new(
        responses: impl Stream<Item = Result<M, Status>> + Send + 'static,
        max_message_size: usize,
    ) -> Self {
        Self {
            responses: Box::pin(responses),
            pending: VecDeque::new(),
            max_message_size,
            finished: false,
        }
    }

    fn trailers(&mut self, status: &Status) -> Frame<Bytes> {
        self.finished = true;
        let mut trailers = HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // Only a status message that cannot be a header value fails;
            // the code alone always can.
            trailers.insert(
                Status::GRPC_STATUS,
                tonic::codegen::http::HeaderValue::from(tonic::Code::Internal as i32),
            );
        }
        Frame::trailers(trailers)
    }
}

impl<M> std::fmt::Debug for ResponseBody<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pending_chunks", &self.pending.len())
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<M: EncodeMessage> http_body::Body for ResponseBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        match this.responses.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let len = message.encoded_len();
                if len > this.max_message_size {
                    let status = Status::out_of_range(format!(
                        "a {len}-byte response exceeds the {}-byte message size limit",
                        this.max_message_size
                    ));
                    tracing::warn!(%status, "response not sent");
                    return Poll::Ready(Some(Ok(this.trailers(&status))));
                }
                this.pending.extend(frame_message(&message, len));
                match this.pending.pop_front() {
                    Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                    None => Poll::Ready(Some(Ok(
                        this.trailers(&Status::internal("an empty response frame"))
                    ))),
                }
            }
            Poll::Ready(Some(Err(status))) => Poll::Ready(Some(Ok(this.trailers(&status)))),
            Poll::Ready(None) => Poll::Ready(Some(Ok(this.trailers(&Status::ok(""))))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.pending.is_empty()
    }
}

/// Decodes requests with prost.
#[derive(Debug)]
pub(crate) struct RequestDecoder<In>(PhantomData<fn() -> In>);

impl<In> Default for RequestDecoder<In> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<In: Message + Default> Decoder for RequestDecoder<In> {
    type Item = In;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<In>, Status> {
        In::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource as ProtoResource,
    };

    /// Two small clusters and one above the share threshold.
    fn resources() -> Vec<Resource> {
        let mut clusters: Vec<Cluster> = ["a", "b"]
            .into_iter()
            .map(|name| Cluster {
                name: name.to_owned(),
                ..Cluster::default()
            })
            .collect();
        clusters.push(Cluster {
            name: "large".to_owned(),
            alt_stat_name: "x".repeat(SHARE_THRESHOLD * 2),
            ..Cluster::default()
        });
        clusters
            .iter()
            .map(|c| Resource::encode(c).expect("encodes"))
            .collect()
    }

    /// The framed message as chunks, and the message bytes without the header.
    fn encode(message: &impl EncodeMessage) -> (Vec<Bytes>, Vec<u8>) {
        let len = message.encoded_len();
        let chunks = frame_message(message, len);
        let framed: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(framed[0], 0, "uncompressed");
        let declared = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]);
        assert_eq!(declared as usize, len);
        assert_eq!(framed.len(), GRPC_HEADER_LEN + len, "length is exact");
        (chunks, framed[GRPC_HEADER_LEN..].to_vec())
    }

    #[test]
    fn sotw_responses_decode_as_envoys_discovery_response() {
        let resources = resources();
        let response = SotwResponse {
            version_info: "v1".to_owned(),
            resources: resources.clone(),
            type_url: crate::ResourceType::Cluster.type_url(),
            nonce: "7".to_owned(),
        };
        let (_, bytes) = encode(&response);
        let decoded = DiscoveryResponse::decode(bytes.as_slice()).expect("decodes");
        let expected = DiscoveryResponse {
            version_info: "v1".to_owned(),
            resources: resources.iter().map(|r| r.to_any().expect("any")).collect(),
            type_url: crate::ResourceType::Cluster.type_url().to_owned(),
            nonce: "7".to_owned(),
            ..DiscoveryResponse::default()
        };
        assert_eq!(decoded, expected);
    }

    #[test]
    fn large_resources_are_shared_not_copied() {
        let resources = resources();
        let large = resources[2].encoded_any().clone();
        let response = SotwResponse {
            version_info: "v1".to_owned(),
            resources,
            type_url: crate::ResourceType::Cluster.type_url(),
            nonce: "7".to_owned(),
        };
        let (chunks, _) = encode(&response);
        assert!(
            chunks
                .iter()
                .any(|c| c.as_ptr() == large.as_ptr() && c.len() == large.len()),
            "the cached bytes themselves are a chunk"
        );
        assert_eq!(
            chunks.len(),
            3,
            "copied prefix, shared resource, copied suffix"
        );
    }

    #[test]
    fn delta_responses_decode_as_envoys_delta_discovery_response() {
        let resources = resources();
        let response = DeltaResponse {
            system_version_info: String::new(),
            resources: resources.clone(),
            type_url: crate::ResourceType::Cluster.type_url(),
            removed_resources: vec![Arc::from("gone")],
            nonce: "8".to_owned(),
        };
        let (_, bytes) = encode(&response);
        let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("decodes");
        let expected = DeltaDiscoveryResponse {
            resources: resources
                .iter()
                .map(|r| ProtoResource {
                    name: r.name().to_owned(),
                    version: r.version().to_string(),
                    resource: Some(r.to_any().expect("any")),
                    ..ProtoResource::default()
                })
                .collect(),
            type_url: crate::ResourceType::Cluster.type_url().to_owned(),
            removed_resources: vec!["gone".to_owned()],
            nonce: "8".to_owned(),
            ..DeltaDiscoveryResponse::default()
        };
        assert_eq!(decoded, expected);
    }

    #[test]
    fn an_empty_response_is_valid() {
        let response = SotwResponse {
            version_info: String::new(),
            resources: Vec::new(),
            type_url: crate::ResourceType::Cluster.type_url(),
            nonce: "1".to_owned(),
        };
        let (_, bytes) = encode(&response);
        let decoded = DiscoveryResponse::decode(bytes.as_slice()).expect("decodes");
        assert!(decoded.resources.is_empty());
        assert_eq!(decoded.nonce, "1");
    }
}
