pub trait Kv {
    async fn get(&self, #[key] __affinity: String) -> String;
}
