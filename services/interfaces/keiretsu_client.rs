//! What a Keiretsu client serves: the endpoint messages are delivered to.

/// A messaging client's endpoint.
pub trait KeiretsuClient {
    /// A message for `to` (one of the names bound to this endpoint).
    #[idempotent]
    async fn deliver(&self, to: String, from: String, text: String, msg_id: u64);
}
