pub trait Kv {
    async fn copy(&self, #[key] from: String, #[key] to: String);
}
