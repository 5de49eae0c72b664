//! The recstack dashboard (Leptos SSR + hydration): trace search, per-request funnel and
//! lineage, "why not", overview charts and stack status.
//!
//! Empty until the dashboard issue lands.
