//! Build-time stub generator, driven from `build.rs`: one interface definition gives typed
//! client stubs, server skeletons, one-way and multicast stubs and redirector stubs.
//!
//! Not built yet: see issue 4. Until it lands, services register handlers by method id with
//! `multispace_rpc::ServiceBuilder`, which is the dispatch surface generated code will target.
#![forbid(unsafe_code)]
