//! Keiretsu: the MultiSpace paper's instant-messaging service (section 4.2). Clients bind a
//! name to an endpoint under a lease; any instance can deliver a message to any client,
//! because instances share the bindings they learn.

/// The messaging service.
pub trait Keiretsu {
    /// Bind `name` to the client endpoint `client` (`ip:port` serving `KeiretsuClient`) for
    /// `lease_ms`; the client renews by calling again before it runs out.
    #[idempotent]
    async fn identify_self(&self, #[key] name: String, client: String, lease_ms: u32);

    /// Drop the binding of `name`.
    #[idempotent]
    async fn disconnect_self(&self, #[key] name: String);

    /// Deliver `text` from `from` to `to`; true if delivered, false if `to` is not bound.
    /// `msg_id` makes a repeated delivery recognisable, so the call is safe to repeat.
    #[idempotent]
    async fn inject_message(&self, #[key] to: String, from: String, text: String, msg_id: u64) -> bool;

    /// The names bound now.
    #[idempotent]
    async fn get_client_list(&self) -> Vec<String>;

    /// This instance's binding of `name`, if any: the client endpoint and the lease left in
    /// ms. An instance that restarted empty asks its peers before calling a name unbound.
    #[idempotent]
    async fn find_binding(&self, name: String) -> Option<(String, u32)>;

    /// A binding learnt by another instance (`lease_ms` 0: removed).
    #[idempotent]
    async fn share_binding(&self, name: String, client: String, lease_ms: u32);
}
