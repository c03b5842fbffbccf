//! # multispace-services
//!
//! Services built the way users build them: an interface file (`interfaces/*.rs`), two
//! lines of `build.rs` running multispace-stubgen, and an implementation of the generated
//! trait. What this crate owns:
//! - [`calc`]: the calculator interface's generated stubs (every method shape: calls with
//!   and without results, application errors, a non-idempotent method, key affinity, one-way
//!   and multicast notices);
//! - [`Calculator`]: an implementation, used by the tests, benchmarks and demos;
//! - [`keiretsu`]: the paper's instant-messaging service, its client endpoint, and the
//!   speedometer and driver load clients.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use multispace_rpc::rkyv::Archived;
use multispace_rpc::{CallContext, Status};

pub mod keiretsu;

/// The calculator's generated stubs.
#[allow(missing_docs)]
pub mod calc {
    include!(concat!(env!("OUT_DIR"), "/calc.rs"));
}

use calc::Point;

/// A calculator instance: a register, a small store, and what it was told one-way.
#[derive(Debug, Default)]
pub struct Calculator {
    name: String,
    register: Cell<i64>,
    store: RefCell<HashMap<String, i64>>,
    log: RefCell<Vec<String>>,
    announcements: RefCell<Vec<Point>>,
}

impl Calculator {
    /// An instance answering `whoami` with `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Calculator { name: name.into(), ..Calculator::default() }
    }

    /// The register's value.
    pub fn register(&self) -> i64 {
        self.register.get()
    }

    /// Lines received by `log`.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.borrow().clone()
    }

    /// Points received by `announce`.
    pub fn announcements(&self) -> Vec<Point> {
        self.announcements.borrow().clone()
    }
}

impl calc::Calc for Calculator {
    async fn ping(&self, _ctx: &CallContext) -> Result<(), Status> {
        Ok(())
    }

    async fn add(&self, _ctx: &CallContext, a: &Archived<i64>, b: &Archived<i64>) -> Result<i64, Status> {
        Ok(a.to_native().wrapping_add(b.to_native()))
    }

    async fn divide(&self, _ctx: &CallContext, a: &Archived<i64>, b: &Archived<i64>) -> Result<i64, Status> {
        a.to_native().checked_div(b.to_native()).ok_or_else(|| Status::application("division by zero"))
    }

    async fn accumulate(&self, _ctx: &CallContext, x: &Archived<i64>) -> Result<i64, Status> {
        self.register.set(self.register.get().wrapping_add(x.to_native()));
        Ok(self.register.get())
    }

    async fn echo(&self, _ctx: &CallContext, data: &Archived<Vec<u8>>) -> Result<Vec<u8>, Status> {
        Ok(data.to_vec())
    }

    async fn centroid_sum(&self, _ctx: &CallContext, points: &Archived<Vec<Point>>) -> Result<Point, Status> {
        let (x, y) = points
            .iter()
            .fold((0i64, 0i64), |(x, y), p| (x.wrapping_add(p.x.to_native()), y.wrapping_add(p.y.to_native())));
        Ok(Point { x, y })
    }

    async fn get(&self, _ctx: &CallContext, name: &Archived<String>) -> Result<Option<i64>, Status> {
        Ok(self.store.borrow().get(name.as_str()).copied())
    }

    async fn set(&self, _ctx: &CallContext, name: &Archived<String>, value: &Archived<i64>) -> Result<(), Status> {
        self.store.borrow_mut().insert(name.as_str().to_owned(), value.to_native());
        Ok(())
    }

    async fn whoami(&self, _ctx: &CallContext) -> Result<String, Status> {
        Ok(self.name.clone())
    }

    async fn log(&self, _ctx: &CallContext, line: &Archived<String>) {
        self.log.borrow_mut().push(line.as_str().to_owned());
    }

    async fn announce(&self, _ctx: &CallContext, at: &Archived<Point>) {
        self.announcements.borrow_mut().push(Point { x: at.x.to_native(), y: at.y.to_native() });
    }
}
