pub trait Sink {
    async fn push(&self, items: impl IntoIterator<Item = u8>);
}
