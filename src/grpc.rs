//! The gRPC contract, generated at build time from `protocol/milena.proto`.
//!
//! Re-exports what the operations guide's snippets use: `RouterClient`,
//! `LeaveRequest` and the other messages, `RouterServer`, and tonic's
//! `Server` and `Channel`.
#![allow(missing_docs, clippy::all)]

tonic::include_proto!("milena");

pub use router_client::RouterClient;
pub use router_server::RouterServer;
pub use tonic::transport::{Channel, Server};

/// The codec of the generated client and server: prost's, except that a
/// request that does not decode (a truncated field, a `string` that is not
/// UTF-8) is the caller's INVALID_ARGUMENT, not the server's INTERNAL.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(self.0.decoder())
    }
}

/// prost's decoder, with decode errors as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct Decoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        self.0.decode(buf).map_err(|s| {
            tonic::Status::invalid_argument(format!("the request does not decode: {}", s.message()))
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}
