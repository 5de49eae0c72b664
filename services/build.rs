/// Every service's and client's codec: prost's messages through byte slices (`src/codec.rs`).
const CODEC: &str = "crate::codec::SliceCodec";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let configure = || tonic_prost_build::configure().codec_path(CODEC);
    for proto in ["recall", "rerank", "gateway", "events"] {
        let path = format!("proto/{proto}.proto");
        configure().compile_protos(&[path.as_str()], &["proto"])?;
    }
    // The feature messages are recstack_core's (generated there); only the stubs are here.
    configure()
        .extern_path(".recstack.features.v1", "::recstack_core::features")
        .compile_protos(&["proto/features.proto"], &["proto"])?;
    // Ranking requests carry the feature service's UserFeatures: reuse its generated type. Its
    // own directory, so the (empty) features module generated beside it overwrites nothing.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ranking");
    std::fs::create_dir_all(&out)?;
    configure()
        .out_dir(out)
        .extern_path(".recstack.features.v1", "crate::features::proto")
        .compile_protos(&["proto/ranking.proto"], &["proto"])?;
    Ok(())
}
