//! Generated protobuf types: the `.netsy` file format and etcd's v3 API.

#![allow(clippy::all, missing_docs)]

/// The `.netsy` data file messages.
pub mod netsy {
    tonic::include_proto!("netsy.v1");
}

/// Netsy's peer protocol (followers and the leader).
pub mod peer {
    tonic::include_proto!("netsy.peer.v1");
}

/// etcd's storage messages (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's v3 client API (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Encoded descriptors of every proto above, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
