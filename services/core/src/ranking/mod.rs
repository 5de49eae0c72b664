//! What the ranking model is given: each candidate's row of inputs assembled from the user's
//! and the item's features ([`features`]), and the split model's first stage folded into
//! per-side tables ([`folded`]), and a tree ensemble compiled for serving ([`trees`]). The model
//! itself runs in `recstack_services::ranking`.

pub mod features;
pub mod folded;
pub mod spec;
pub mod trees;
