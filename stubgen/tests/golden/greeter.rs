//! A small interface for the golden test.

/// Greets people.
pub trait Greeter {
    /// A greeting for `name`.
    #[idempotent]
    async fn greet(&self, #[key] name: String) -> String;

    /// A lookup whose key argument is named `key` (the stubs' own locals must not clash).
    #[idempotent]
    async fn lookup(&self, #[key] key: String) -> Option<String>;

    /// Count a visit.
    async fn visit(&self, count: u32) -> u64;

    /// Tell one instance.
    #[oneway]
    async fn note(&self, text: String);

    /// Tell every instance.
    #[multicast]
    async fn broadcast(&self, text: String);
}
