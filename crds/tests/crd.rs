//! The committed CRD YAML is exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_types() {
    let path = format!("{}/recommenderstack.yaml", std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let committed = std::fs::read_to_string(path).expect("crds/recommenderstack.yaml exists");
    let generated = recstack_crds::crd_yaml();
    assert!(
        committed == generated,
        "crds/recommenderstack.yaml is out of date with crds/src/lib.rs; regenerate it with\n  cargo run -p recstack-crds --bin crdgen > crds/recommenderstack.yaml"
    );
}

#[test]
fn crd_has_status_printer_columns_and_short_name() {
    let crd: serde_yaml::Value = serde_yaml::from_str(&recstack_crds::crd_yaml()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "rstack");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert!(
        version["subresources"]["status"].is_mapping(),
        "status subresource enabled"
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Phase", "Stream", "Model", "Age"]);
    // kubectl explain prints these descriptions.
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let gpu = spec["ranking"]["properties"]["gpu"]["properties"]["count"]["description"]
        .as_str()
        .unwrap();
    assert!(gpu.contains("nvidia.com/gpu"), "{gpu}");
}

#[test]
fn every_spec_field_is_documented() {
    fn walk(path: &str, schema: &serde_yaml::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema["properties"].as_mapping() {
            for (name, sub) in props {
                let p = format!("{path}.{}", name.as_str().unwrap());
                // Fields of embedded Kubernetes types carry upstream docs already.
                if sub["description"].as_str().is_none_or(str::is_empty) {
                    missing.push(p.clone());
                }
                walk(&p, sub, missing);
            }
        }
        if schema["items"].is_mapping() {
            walk(&format!("{path}[]"), &schema["items"], missing);
        }
    }
    let crd: serde_yaml::Value = serde_yaml::from_str(&recstack_crds::crd_yaml()).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
    let mut missing = Vec::new();
    walk("spec", &root["spec"], &mut missing);
    walk("status", &root["status"], &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a doc comment (kubectl explain shows nothing): {missing:#?}"
    );
}
