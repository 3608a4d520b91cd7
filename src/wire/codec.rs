//! The codec of every generated client and server (`build.rs` names it): prost's encoding,
//! and prost's decoding read from `Bytes` instead of from tonic's `DecodeBuf`.
//!
//! A `DecodeBuf` steps through a `BytesMut`, and prost takes a step for every tag, length
//! and number: dozens per message, each costing several times a step through `Bytes`. The
//! message is first split off the buffer as `Bytes` (no copy), so the values decoded from
//! it are still slices of the same buffer.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// Encodes `T` and decodes `U` (as `tonic_prost::ProstCodec` does, read from `Bytes`).
#[derive(Debug, Clone, Copy)]
pub struct WireCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BytesDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder(PhantomData)
    }
}

/// Decodes `U` from the message split off as `Bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BytesDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for BytesDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let mut message = buf.copy_to_bytes(buf.remaining());
        // As tonic_prost answers a malformed message: INTERNAL.
        U::decode(&mut message).map(Some).map_err(|error| Status::internal(error.to_string()))
    }
}
