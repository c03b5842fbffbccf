pub trait Names {
    async fn greet(&self, name: &str) -> String;
}
