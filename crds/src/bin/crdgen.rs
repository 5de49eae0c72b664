//! Prints the RecommenderStack CRD as YAML: `cargo run -p recstack-crds --bin crdgen > crds/recommenderstack.yaml`.

fn main() {
    print!("{}", recstack_crds::crd_yaml());
}
