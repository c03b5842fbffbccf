//! Sans-IO protocol logic: framing and the client's call table. No sockets, no clock.

pub mod calls;
pub mod frame;
