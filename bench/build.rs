//! Generates the tonic peer's gRPC code (only with the `tonic` feature), with the vendored
//! protoc so nothing is downloaded or needed on the host.

fn main() {
    println!("cargo:rerun-if-changed=proto/table1.proto");
    #[cfg(feature = "tonic")]
    {
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
        tonic_prost_build::configure()
            .compile_with_config(config, &["proto/table1.proto"], &["proto"])
            .expect("compile table1.proto");
    }
}
