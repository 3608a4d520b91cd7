pub mod pb {
    tonic::include_proto!("pubsub");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pubsub_descriptor");
}
