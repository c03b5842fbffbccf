pub trait First {
    async fn a(&self);
}

pub trait Second {
    async fn b(&self);
}
