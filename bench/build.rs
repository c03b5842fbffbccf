//! Generates the tonic peer's gRPC code (only with the `tonic` feature), with the vendored
//! protoc so nothing is downloaded or needed on the host; and the capnp-rpc peer's code (with
//! the `capnp` feature) where the `capnp` tool is installed.

fn main() {
    println!("cargo:rerun-if-changed=proto/table1.proto");
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    println!("cargo:rerun-if-changed=schema/table1.capnp");
    println!("cargo:rustc-check-cfg=cfg(has_capnp)");
    #[cfg(feature = "capnp")]
    {
        let tool = std::process::Command::new("capnp").arg("--version").output();
        if tool.is_ok_and(|o| o.status.success()) {
            capnpc::CompilerCommand::new()
                .src_prefix("schema")
                .default_parent_module(vec!["peers".into(), "capnp_peer".into(), "schema".into()])
                .file("schema/table1.capnp")
                .run()
                .expect("compile table1.capnp");
            println!("cargo:rustc-cfg=has_capnp");
        } else {
            println!(
                "cargo:warning=capnp tool not installed: the capnp-rpc peer is left out (apt-get install capnproto)"
            );
        }
    }
    #[cfg(feature = "tonic")]
    {
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
        tonic_prost_build::configure()
            .compile_with_config(config, &["proto/table1.proto", "proto/etcd_kv.proto"], &["proto"])
            .expect("compile the protos");
    }
}
