pub trait Calc {
    async fn add(&self, a: i64, b: i64) -> i64;

    async fn add(&self, a: i32, b: i32) -> i32;
}
