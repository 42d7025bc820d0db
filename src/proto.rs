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

/// etcd's auth records (`authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's v3 client API (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service (`v3lockpb`).
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service (`v3electionpb`).
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Encoded descriptors of every proto above, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
