fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::compile_protos("proto/recall.proto")?;
    // The feature messages are recstack_core's (generated there); only the stubs are here.
    tonic_prost_build::configure()
        .extern_path(".recstack.features.v1", "::recstack_core::features")
        .compile_protos(&["proto/features.proto"], &["proto"])?;
    tonic_prost_build::compile_protos("proto/rerank.proto")?;
    tonic_prost_build::compile_protos("proto/gateway.proto")?;
    tonic_prost_build::compile_protos("proto/events.proto")?;
    // Ranking requests carry the feature service's UserFeatures: reuse its generated type. Its
    // own directory, so the (empty) features module generated beside it overwrites nothing.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ranking");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .out_dir(out)
        .extern_path(".recstack.features.v1", "crate::features::proto")
        .compile_protos(&["proto/ranking.proto"], &["proto"])?;
    Ok(())
}
