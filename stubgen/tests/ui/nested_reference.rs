pub trait Batch {
    async fn sum(&self, values: Vec<&[u8]>) -> u64;
}
