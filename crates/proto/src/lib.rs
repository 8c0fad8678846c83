//! gRPC contracts of the crawler and the conversions between them and the
//! job model of `crawler-core`.

pub mod convert;

/// Version 1 of the crawl contracts: the lock service and the master/worker stream.
pub mod crawler {
    #[allow(clippy::large_enum_variant)] // generated code: oneofs hold messages by value
    pub mod v1 {
        tonic::include_proto!("crawler.v1");
    }
}

pub use crawler::v1;

/// Version 1 of the spider file-sync contract.
pub mod filesync {
    pub mod v1 {
        tonic::include_proto!("crawler.filesync.v1");
    }
}

/// Bumped whenever the master/worker stream changes incompatibly; a master
/// refuses a worker that registers with another version.
pub const WORK_PROTOCOL_VERSION: u32 = 1;

/// The gRPC metadata entry in which a lock-server replica that does not lead
/// names the address of the one that does.
pub const LEADER_METADATA_KEY: &str = "crawler-leader";
