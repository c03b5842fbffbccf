//! Sans-IO protocol logic: framing, the trace-context block, the client's call table, and the redirector's choice of
//! instance and failover rule. No sockets, no clock.

pub mod balance;

pub mod calls;
pub mod frame;
pub mod trace;
