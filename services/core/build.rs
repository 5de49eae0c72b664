fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto/features.proto");
    // Messages only: the services crate generates the gRPC stubs over these types.
    prost_build::compile_protos(&["../proto/features.proto"], &["../proto"])?;
    Ok(())
}
