pub trait Calc {
    async fn new(&self) -> u64;
}
