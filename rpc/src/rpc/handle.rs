//! A `Send + Sync` client for code outside the runtime: a tokio service, a plain thread.
//! Requests are archived on the caller's thread, handed to a core through its remote queue,
//! and sent on that core's cached connection; the response bytes come back and are
//! validated on the caller's side.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;

use super::client::{CallOptions, Client};
use super::conn::ConnConfig;
use super::error::CallError;
use crate::buf::{archive, Message, Payload, Validate};
use crate::runtime::{block_on_thread, CoreHandle};

thread_local! {
    // One connection per (core, server) shared by every handle that routes through this core.
    static CLIENTS: RefCell<HashMap<(usize, SocketAddr), Client>> = RefCell::new(HashMap::new());
}

/// A thread-safe handle making calls to one server through one runtime core.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    core: CoreHandle,
    addr: SocketAddr,
    config: ConnConfig,
}

impl ClientHandle {
    /// Calls to `addr` will run on `core`.
    pub fn new(core: CoreHandle, addr: SocketAddr) -> Self {
        ClientHandle { core, addr, config: ConnConfig::default() }
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Make a call from any thread or runtime; await it anywhere.
    pub async fn call<Req, Resp>(
        &self,
        method_id: u32,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Message<Resp>, CallError>
    where
        Req: Payload,
        Resp: Validate,
    {
        let payload = archive(req, self.config.max_payload)?;
        let (addr, config) = (self.addr, self.config.clone());
        let core_id = self.core.shared.id;
        // The caller's trace (this thread's) goes with the call to the core that makes it.
        let trace = crate::trace::current();
        let result = self
            .core
            .spawn(move || async move {
                let client = CLIENTS.with(|c| {
                    // The target core's own settings (TLS if it runs with it); the handle's
                    // limits only bound what it archives here.
                    c.borrow_mut()
                        .entry((core_id, addr))
                        .or_insert_with(|| {
                            Client::with_config(
                                addr,
                                ConnConfig { max_payload: config.max_payload, ..ConnConfig::for_this_core() },
                            )
                        })
                        .clone()
                });
                crate::trace::in_trace(trace, client.call_bytes(method_id, &payload, opts)).await
            })
            .await
            .map_err(|_| CallError::ConnectionLost)??;
        Message::new(result).map_err(CallError::InvalidResponse)
    }

    /// [`ClientHandle::call`], blocking this thread. Do not call from inside a runtime core.
    pub fn call_blocking<Req, Resp>(
        &self,
        method_id: u32,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Message<Resp>, CallError>
    where
        Req: Payload,
        Resp: Validate,
    {
        block_on_thread(self.call(method_id, req, opts))
    }
}
