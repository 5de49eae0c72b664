//! The sequence model into the artifacts: its card, item rows and user-tower graph read from a
//! model directory (`scripts/train-seq` writes `model.json`, `items.f32`, `tower.onnx`), the
//! rows renumbered to this data set's dense item ids by external id, and the ANN index rebuilt
//! over them (the vector channel searches the model's space then).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use recstack_core::artifacts::factors::Factors;
use recstack_core::artifacts::seq::{SeqCard, SeqModel};

use super::{Artifacts, BuildError, BuildParams, ann, sha256_hex};

/// The bundled model, trained on the bundled data (`services/models/seq`; its validation
/// world's model in `validation/`).
pub fn bundled_dir() -> PathBuf {
    recstack_core::source_file("models/seq")
}

/// The files of a model directory, in the order their hashes join the artifact inputs.
pub const FILES: [&str; 3] = ["model.json", "items.f32", "tower.onnx"];

/// Why a model directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SeqModelError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A model directory read into memory, not yet matched to a data set.
pub struct SeqSource {
    pub dir: PathBuf,
    pub card: SeqCard,
    pub rows: Vec<f32>,
    pub tower_onnx: Vec<u8>,
    /// sha256 of each of [`FILES`].
    pub hashes: Vec<(String, String)>,
}

impl SeqSource {
    pub fn read(dir: &Path) -> Result<Self, SeqModelError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| SeqModelError::Io { path, source })
        };
        let invalid = |name: &str, message: String| SeqModelError::Invalid {
            path: dir.join(name),
            message,
        };
        let (card_bytes, row_bytes, tower_onnx) = (read(FILES[0])?, read(FILES[1])?, read(FILES[2])?);
        let card: SeqCard = serde_json::from_slice(&card_bytes).map_err(|e| invalid(FILES[0], e.to_string()))?;
        if card.dim == 0 || card.seq_len == 0 {
            return Err(invalid(FILES[0], "dim and seq_len must be positive".into()));
        }
        let want = card.items.len() * card.dim * 4;
        if row_bytes.len() != want {
            return Err(invalid(
                FILES[1],
                format!(
                    "{} bytes; the card's {} items × {} dims need {want}",
                    row_bytes.len(),
                    card.items.len(),
                    card.dim
                ),
            ));
        }
        let rows: Vec<f32> = row_bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if !rows.iter().all(|x| x.is_finite()) {
            return Err(invalid(FILES[1], "a row holds a value that is not finite".into()));
        }
        let hashes = [&card_bytes, &row_bytes, &tower_onnx]
            .iter()
            .zip(FILES)
            .map(|(bytes, name)| (format!("seq/{name}"), sha256_hex(bytes)))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            card,
            rows,
            tower_onnx,
            hashes,
        })
    }

    /// The model for a catalogue whose dense ids name `item_ids`: each known item's row at
    /// its dense id, zeros for the rest. Refused when the model knows under half of the
    /// catalogue's items that have ratings in `rated` (another data set's model).
    pub fn for_catalogue(&self, item_ids: &[String], rated: &[bool]) -> Result<SeqModel, SeqModelError> {
        let dim = self.card.dim;
        let position = self.positions();
        let mut rows = vec![0f32; item_ids.len() * dim];
        for (i, id) in item_ids.iter().enumerate() {
            if let Some(&k) = position.get(id.as_str()) {
                rows[i * dim..(i + 1) * dim].copy_from_slice(&self.rows[k * dim..(k + 1) * dim]);
            }
        }
        let (known, wanted) = self.coverage(item_ids, rated);
        if known * 2 < wanted {
            return Err(SeqModelError::Invalid {
                path: self.dir.join(FILES[0]),
                message: format!(
                    "the model knows {known} of the data's {wanted} rated items: it was trained on other data"
                ),
            });
        }
        Ok(SeqModel {
            version: self.card.version.clone(),
            seq_len: self.card.seq_len,
            input: self.card.input.clone(),
            mask_input: self.card.mask_input.clone(),
            output: self.card.output.clone(),
            rows: Factors::new(dim, Vec::new(), rows),
            tower_onnx: self.tower_onnx.clone(),
            tower: None,
        })
    }
}

impl SeqSource {
    fn positions(&self) -> HashMap<&str, usize> {
        self.card
            .items
            .iter()
            .enumerate()
            .map(|(k, id)| (id.as_str(), k))
            .collect()
    }

    /// (rated items the model knows, rated items): [`SeqSource::for_catalogue`] refuses a
    /// model that knows under half.
    pub fn coverage(&self, item_ids: &[String], rated: &[bool]) -> (usize, usize) {
        let position = self.positions();
        let rated_ids = item_ids.iter().zip(rated).filter(|(_, r)| **r);
        rated_ids.fold((0, 0), |(known, wanted), (id, _)| {
            (known + usize::from(position.contains_key(id.as_str())), wanted + 1)
        })
    }

    /// Whether the model fits a data set: it knows at least half of its rated items.
    pub fn fits(&self, ds: &crate::dataset::Dataset) -> bool {
        let mut rated = vec![false; ds.items.len()];
        for r in &ds.ratings {
            rated[r.item as usize] = true;
        }
        let ids: Vec<String> = ds.items.iter().map(|i| i.id.clone()).collect();
        let (known, wanted) = self.coverage(&ids, &rated);
        known * 2 >= wanted
    }
}

/// Puts the model of `source` into `a` and rebuilds `a.ann` over its item rows (rated items
/// the model knows), as the build does for the ALS factors.
pub fn attach(a: &mut Artifacts, source: &SeqSource, params: &BuildParams) -> Result<(), BuildError> {
    let rated: Vec<bool> = a.item_features.iter().map(|f| f.ratings > 0).collect();
    let ids: Vec<String> = a.items.iter().map(|i| i.id.clone()).collect();
    let model = source.for_catalogue(&ids, &rated)?;
    let vectors = (0..ids.len() as u32)
        .filter(|&i| rated[i as usize] && model.rows.inverse_norms()[i as usize] > 0.0)
        .map(|i| (i, ann::UnitVec::new(model.rows.item(i))))
        .collect();
    a.ann = ann::ItemIndex::build(vectors, params.seed, params.ann_ef_construction, params.ann_ef_search);
    a.seq = Some(model);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(items: &[&str], rows: Vec<f32>) -> SeqSource {
        SeqSource {
            dir: PathBuf::from("m"),
            card: serde_json::from_value(serde_json::json!({
                "version": "seq-t", "dim": 2, "seq_len": 3, "input": "recent", "mask_input": "mask",
                "output": "user", "items": items,
            }))
            .unwrap(),
            rows,
            tower_onnx: vec![1, 2, 3],
            hashes: Vec::new(),
        }
    }

    #[test]
    fn rows_follow_the_catalogues_ids_and_unknown_items_get_zeros() {
        let s = source(&["b", "a"], vec![1., 2., 3., 4.]);
        let ids: Vec<String> = ["a", "x", "b"].iter().map(|s| s.to_string()).collect();
        let m = s.for_catalogue(&ids, &[true, false, true]).unwrap();
        assert_eq!(m.rows.items, vec![3., 4., 0., 0., 1., 2.]);
        assert_eq!((m.seq_len, m.tower_onnx.as_slice()), (3, &[1u8, 2, 3][..]));
    }

    #[test]
    fn a_model_of_other_data_is_refused_naming_what_it_knows() {
        let s = source(&["a"], vec![1., 2.]);
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let e = s.for_catalogue(&ids, &[true, true, true]).err().unwrap().to_string();
        assert!(e.contains("knows 1 of the data's 3 rated items"), "{e}");
        // Unrated items do not count: 1 of 1 rated.
        assert!(s.for_catalogue(&ids, &[true, false, false]).is_ok());
    }

    #[test]
    fn a_directory_with_rows_of_the_wrong_size_is_refused() {
        let dir = std::env::temp_dir().join(format!("recstack-seq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let card = r#"{"version":"v","dim":2,"seq_len":3,"input":"recent","mask_input":"mask","output":"user","items":["a","b"]}"#;
        std::fs::write(dir.join("model.json"), card).unwrap();
        std::fs::write(dir.join("items.f32"), [0u8; 12]).unwrap();
        std::fs::write(dir.join("tower.onnx"), b"graph").unwrap();
        let e = SeqSource::read(&dir).err().unwrap().to_string();
        assert!(e.contains("12 bytes; the card's 2 items × 2 dims need 16"), "{e}");
        std::fs::write(dir.join("items.f32"), [0u8; 16]).unwrap();
        let s = SeqSource::read(&dir).unwrap();
        assert_eq!(s.hashes.len(), 3);
        assert_eq!(s.hashes[0].0, "seq/model.json");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
