//! What generated stubs (multispace-stubgen) share at run time: the description of an
//! interface a server reports, and the check a client makes against it.

use rkyv::{Archive, Deserialize, Serialize};

use super::client::{CallOptions, Client};
use super::error::CallError;

/// One method of an interface as built: its name and wire id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// The method's name in the interface file.
    pub name: String,
    /// Its wire id (derived from the service name, method name and signature).
    pub id: u32,
}

/// An interface as one side was built from it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// The service (trait) name.
    pub service: String,
    /// A hash over every method's name and id.
    pub fingerprint: u64,
    /// The methods.
    pub methods: Vec<MethodInfo>,
}

/// A client and a server built from different versions of an interface.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterfaceMismatch {
    /// The check itself failed (could not reach the server, ...).
    #[error("could not fetch the server's interface")]
    Call(#[source] CallError),
    /// The server does not serve this interface at all.
    #[error("the server does not serve the `{service}` interface")]
    NotServed {
        /// The service looked for.
        service: String,
    },
    /// The server serves the interface, built from a version that lacks (or changed) methods
    /// this client calls.
    #[error(
        "the server's `{service}` interface differs from this client's (fingerprints {client:#018x} here, {server:#018x} there); \
         methods this client would call that the server lacks or has with another signature: [{}]; \
         methods only the server has: [{}]",
        client_only.join(", "),
        server_only.join(", ")
    )]
    Differs {
        /// The service.
        service: String,
        /// This client's fingerprint.
        client: u64,
        /// The server's fingerprint.
        server: u64,
        /// Methods whose id the server does not serve (missing, or another signature).
        client_only: Vec<String>,
        /// Methods the server has that this client does not know (harmless: added later).
        server_only: Vec<String>,
    },
}

/// Ask the server behind `client` for its build of `expected.service` (method
/// `interface_method`) and compare. `Ok` if the server serves every method this client knows
/// with the same signature; a server that has only added methods passes (adding a method is
/// backward compatible).
pub async fn check_interface(
    client: &Client,
    interface_method: u32,
    expected: &InterfaceInfo,
) -> Result<(), InterfaceMismatch> {
    let theirs = match client.call::<(), InterfaceInfo>(interface_method, &(), CallOptions::default()).await {
        Ok(m) => m,
        Err(CallError::UnknownMethod { .. }) => {
            return Err(InterfaceMismatch::NotServed { service: expected.service.clone() })
        }
        Err(e) => return Err(InterfaceMismatch::Call(e)),
    };
    if theirs.fingerprint.to_native() == expected.fingerprint && theirs.service.as_str() == expected.service {
        return Ok(());
    }
    let has = |id: u32| theirs.methods.iter().any(|m| m.id == id);
    let client_only: Vec<String> = expected.methods.iter().filter(|m| !has(m.id)).map(|m| m.name.clone()).collect();
    if client_only.is_empty() && theirs.service.as_str() == expected.service {
        return Ok(());
    }
    let server_only = theirs
        .methods
        .iter()
        .filter(|m| !expected.methods.iter().any(|e| e.id == m.id))
        .map(|m| m.name.as_str().to_owned())
        .collect();
    Err(InterfaceMismatch::Differs {
        service: expected.service.clone(),
        client: expected.fingerprint,
        server: theirs.fingerprint.to_native(),
        client_only,
        server_only,
    })
}
