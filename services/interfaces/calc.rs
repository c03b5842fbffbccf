//! A calculator: one method of every shape the stub generator supports.

use multispace_rpc::rkyv::{Archive, Deserialize, Serialize};

/// A point in the plane.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = multispace_rpc::rkyv, derive(Debug))]
pub struct Point {
    /// Horizontal.
    pub x: i64,
    /// Vertical.
    pub y: i64,
}

/// Arithmetic, a register, and notices.
pub trait Calc {
    /// Does nothing: the null call.
    #[idempotent]
    async fn ping(&self);

    /// `a + b`.
    #[idempotent]
    async fn add(&self, a: i64, b: i64) -> i64;

    /// `a / b`; dividing by zero is an application error.
    #[idempotent]
    async fn divide(&self, a: i64, b: i64) -> i64;

    /// Adds `x` to this instance's register and returns the new total: not idempotent,
    /// running it twice adds twice.
    async fn accumulate(&self, x: i64) -> i64;

    /// The bytes back.
    #[idempotent]
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;

    /// The sum of the points.
    #[idempotent]
    async fn centroid_sum(&self, points: Vec<Point>) -> Point;

    /// The value stored under `name` at this instance, if any.
    #[idempotent]
    async fn get(&self, #[key] name: String) -> Option<i64>;

    /// Store `value` under `name` (affinity keeps a name on one instance).
    #[idempotent]
    async fn set(&self, #[key] name: String, value: i64);

    /// Which instance answered (for tests and demos).
    #[idempotent]
    async fn whoami(&self) -> String;

    /// Record a line in this instance's log; best effort.
    #[oneway]
    async fn log(&self, line: String);

    /// A notice for every instance in a group.
    #[multicast]
    async fn announce(&self, at: Point);
}
