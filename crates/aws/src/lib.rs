//! AWS Signature Version 4 from the gateway's side.
//!
//! A client (the AWS CLI, an SDK) signs each request with a sluice-issued key pair. The
//! gateway checks that signature ([`sigv4::verify`]), decodes a streamed upload's
//! `aws-chunked` body while checking each chunk's signature ([`chunked::ChunkDecoder`]),
//! names what the request does ([`operation::classify`]) so policy can judge it, and the agent
//! signs the forwarded request again with the real credential ([`sigv4::sign`]).
//!
//! No I/O here: callers hand in request parts and body bytes.
//!
//! Why not the `aws-sigv4` crate: it signs but does not verify, and verifying needs the same
//! canonical request, so both directions share one implementation here. The integration
//! tests check it against botocore's signer (the AWS CLI) and an S3 server's verifier.

pub mod chunked;
pub mod operation;
pub mod sigv4;

pub use chunked::{ChunkDecoder, ChunkError};
pub use operation::{
    batch_delete_keys, classify, query_param_names, valid_bucket_name, xml_text, Operation,
    PRESIGNING,
};
pub use sigv4::{
    sign, verify, Credentials, PayloadHash, SigError, SignatureInfo, SigningScope, Verified,
};
