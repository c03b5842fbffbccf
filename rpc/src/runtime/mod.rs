//! The per-core runtime: one event loop per thread owning its driver, run queue and timers.
//!
//! A core runs `!Send` tasks (handlers may hold `Rc`/`RefCell`). Nothing on the hot path
//! crosses cores; other threads reach a core only through its remote queue and eventfd
//! ([`CoreHandle`]).

mod core;
mod executor;
mod multi;
pub mod time;
pub(crate) mod wheel;

pub use self::core::{current_driver, current_driver_stats, Config, LocalRuntime, WaitMode};
pub use self::executor::{spawn, yield_now, JoinHandle};
pub use self::multi::{block_on_thread, CoreGone, CoreHandle, Runtime, RuntimeBuilder};

pub(crate) use self::core::{
    busy_poll_mode, has_ready_tasks, note_direct_read, spin_yield, spinning, try_with_driver, turn_now, with_driver,
};
