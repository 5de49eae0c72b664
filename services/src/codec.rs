//! The gRPC codec of every recstack service and client: protobuf by prost, as `tonic_prost`'s
//! codec, but decoded from and encoded into plain byte slices.
//!
//! tonic hands a codec its message in a `BytesMut` behind `DecodeBuf` / `EncodeBuf`. prost reads
//! and writes a packed field an element at a time, and every element then goes through those
//! buffers' bookkeeping: an `advance` per varint or float read (bounds assert, `BytesMut`'s
//! position update, not inlined), a `reserve` and `put_slice` per float written. Ranking's calls
//! carry thousands of such elements (the candidates' id ends, fused scores, channel ranks, and
//! the scores back), and in a profile of the ranking bench those paths were ~16 % of the
//! process's CPU. Here a message is decoded from its bytes as one `&[u8]` (taken from the buffer
//! without a copy) and encoded into a `Vec` of its exact length, then copied into tonic's buffer
//! at once; prost's slice paths inline to a few instructions an element. The bytes on the wire
//! are the same.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBody, EncodeBuf, Encoder, Streaming};

/// A [`Codec`] for prost messages through byte slices (see the module docs); set as every
/// generated service's and client's codec by `build.rs`.
#[derive(Debug)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Clone for SliceCodec<T, U> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SliceEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SliceEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Encodes a message into a `Vec` of its length, then into tonic's buffer in one copy.
#[derive(Debug)]
pub struct SliceEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SliceEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        encode_into(&item, buf);
        Ok(())
    }
}

/// Decodes a message from its bytes as one slice.
#[derive(Debug)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        // tonic gathers a message into one `BytesMut` before decoding it, so its bytes are one
        // chunk; should they not be, they are split off it (a copy only across chunks).
        let item = if buf.chunk().len() == len {
            decode_from(buf.chunk())?
        } else {
            decode_from(&buf.copy_to_bytes(len))?
        };
        buf.advance(buf.remaining());
        Ok(Some(item))
    }
}

/// `item`'s protobuf bytes into `buf` in one copy.
fn encode_into<T: Message>(item: &T, buf: &mut impl BufMut) {
    buf.put_slice(&item.encode_to_vec());
}

/// A message from its protobuf bytes; a malformed one is an INTERNAL status, as tonic_prost
/// maps it (gRPC's status code guide).
fn decode_from<U: Message + Default>(bytes: &[u8]) -> Result<U, Status> {
    U::decode(bytes).map_err(|e| Status::internal(e.to_string()))
}

/// `item` through tonic's framing as a call carries it: encoded by `encoder` into a client's
/// request body, then read from that body by `decoder`, as a server reads it. For the tests and
/// the ranking bench, which compare codecs on the messages recstack sends.
pub async fn through<T, U>(
    encoder: impl Encoder<Item = T, Error = Status> + Send + 'static,
    decoder: impl Decoder<Item = U, Error = Status> + Send + 'static,
    item: T,
) -> Result<U, Status>
where
    T: Send + 'static,
    U: Send + 'static,
{
    let body = EncodeBody::new_client(encoder, futures::stream::iter([Ok(item)]), None, None);
    let mut stream = Streaming::new_request(decoder, body, None, None);
    stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("the body held no message"))
}

#[cfg(test)]
mod tests {
    use prost::bytes::BytesMut;
    use tonic_prost::ProstCodec;

    use super::*;
    use crate::ranking::service::proto::{ChannelRanks, PackedIds, RankRequest, RankResponse};

    fn request() -> RankRequest {
        RankRequest {
            user_id: "u-7".into(),
            item_ids: vec!["a".into(), "ß".into()],
            timeout_ms: 40,
            model: "canary".into(),
            fused_scores: vec![1.0, 0.25, f32::MIN_POSITIVE],
            channel_ranks: vec![ChannelRanks {
                channel: "cooc".into(),
                ranks: vec![1, 300, u32::MAX],
                positions: vec![0, 2, 70_000],
            }],
            packed_items: Some(PackedIds {
                ids: b"0454876tt1".to_vec(),
                ends: vec![7, 10],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_bytes_are_prosts_after_what_the_buffer_held_and_read_back_the_same() {
        let mut buf = BytesMut::from(&b"head"[..]);
        encode_into(&request(), &mut buf);
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &request().encode_to_vec()[..]);
        assert_eq!(decode_from::<RankRequest>(&buf[4..]).expect("decode"), request());
    }

    #[tokio::test]
    async fn a_call_reads_what_tonic_prost_wrote_and_tonic_prost_reads_what_it_writes() {
        type Ours = SliceCodec<RankRequest, RankRequest>;
        type Prost = ProstCodec<RankRequest, RankRequest>;
        let (mut ours, mut prost) = (Ours::default(), Prost::default());
        let read = |r: Result<RankRequest, Status>| r.expect("through");
        assert_eq!(
            read(through(ours.encoder(), ours.decoder(), request()).await),
            request()
        );
        assert_eq!(
            read(through(prost.encoder(), ours.decoder(), request()).await),
            request()
        );
        assert_eq!(
            read(through(ours.encoder(), prost.decoder(), request()).await),
            request()
        );
        // A response too, and the message that encodes to no bytes at all.
        let mut answers = SliceCodec::<RankResponse, RankResponse>::default();
        let scores = RankResponse {
            scores: (0..500).map(|i| i as f32 / 7.0).collect(),
            model_version: "deepfm-6".into(),
            ..Default::default()
        };
        let back = through(answers.encoder(), answers.decoder(), scores.clone()).await;
        assert_eq!(back.expect("through"), scores);
        let empty = through(answers.encoder(), answers.decoder(), RankResponse::default()).await;
        assert_eq!(empty.expect("through"), RankResponse::default());
    }

    #[test]
    fn a_malformed_message_is_an_internal_status_naming_the_failure() {
        let mut bytes = request().encode_to_vec();
        // Cut inside the packed items: a length past the end.
        bytes.truncate(bytes.len() - 3);
        let err = decode_from::<RankRequest>(&bytes).expect_err("malformed");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("failed to decode"), "{}", err.message());
        // The empty message is a valid one: every field at its default.
        assert_eq!(decode_from::<RankRequest>(&[]).expect("empty"), RankRequest::default());
    }
}
