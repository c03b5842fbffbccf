//! Sans-IO protocol logic: framing, the trace-context block, the client's call table, the
//! datagram transport's sessions, and the redirector's choice of instance and failover rule.
//! No sockets, no clock.

pub mod balance;

pub mod calls;
pub mod frame;
pub mod session;
pub mod trace;
