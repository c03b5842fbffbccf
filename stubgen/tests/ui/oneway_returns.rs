pub trait Log {
    #[oneway]
    async fn append(&self, line: String) -> u64;
}
