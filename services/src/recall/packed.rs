//! Recall's candidates as columns on the wire ([`PackedCandidates`]): the ids in one buffer,
//! the fused scores and each channel's positions, ranks and scores as packed arrays. A
//! thousand candidates cost a handful of allocations to encode and decode, where one message
//! per candidate and per source costs thousands (the deployed profile's largest share was
//! moving candidates between stages). Pure: no I/O.

use smallvec::SmallVec;
use thiserror::Error;

use super::proto::{self, PackedCandidates, PackedSources};
use crate::id_columns::{self, Fields, IdsError};
use recstack_core::recall::{Channel, Source as Lineage};

/// Builds a [`PackedCandidates`], one candidate at a time, in the merged order.
#[derive(Default)]
pub struct Packer {
    packed: PackedCandidates,
}

impl Packer {
    pub fn with_capacity(candidates: usize) -> Self {
        Self {
            packed: PackedCandidates {
                ids: Vec::with_capacity(candidates * 8),
                id_ends: Vec::with_capacity(candidates),
                fused_scores: Vec::with_capacity(candidates),
                sources: Vec::new(),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.packed.id_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, id: &str, fused_score: f32, sources: &[Lineage]) {
        let position = self.len() as u32;
        let p = &mut self.packed;
        id_columns::push(&mut p.ids, &mut p.id_ends, id);
        p.fused_scores.push(fused_score);
        for s in sources {
            let wire = proto::Channel::from(s.channel) as i32;
            // A handful of channels: a linear search beats a map.
            let column = match p.sources.iter().position(|c| c.channel == wire) {
                Some(i) => &mut p.sources[i],
                None => {
                    p.sources.push(PackedSources {
                        channel: wire,
                        ..Default::default()
                    });
                    p.sources.last_mut().expect("just pushed")
                }
            };
            column.positions.push(position);
            column.ranks.push(s.rank);
            column.scores.push(s.score);
        }
    }

    pub fn finish(self) -> PackedCandidates {
        self.packed
    }
}

/// A candidate read back from the columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Unpacked<'a> {
    pub item_id: &'a str,
    pub fused_score: f32,
    /// In channel order (as the merge lists them). Channels this build does not know (a newer
    /// recall service) are left out, as with `candidates`.
    pub sources: SmallVec<[Lineage; 2]>,
}

/// Columns that do not fit together; each names the field.
#[derive(Debug, Error, PartialEq)]
pub enum UnpackError {
    #[error("packed.fused_scores has {scores} entries for {ids} ids")]
    Scores { scores: usize, ids: usize },
    #[error(transparent)]
    Ids(#[from] IdsError),
    #[error("packed.sources[{at}]: {positions} positions, {ranks} ranks, {scores} scores")]
    Columns {
        at: usize,
        positions: usize,
        ranks: usize,
        scores: usize,
    },
    #[error("packed.sources[{at}].positions has {position} for {ids} candidates")]
    Position { at: usize, position: u32, ids: usize },
}

/// The id columns' names in [`PackedCandidates`], for errors.
const FIELDS: Fields = Fields {
    ids: "packed.ids",
    ends: "packed.id_ends",
};

/// Reads the candidates back, in order; refuses columns that disagree rather than guess.
pub fn unpack(p: &PackedCandidates) -> Result<Vec<Unpacked<'_>>, UnpackError> {
    let ids = p.id_ends.len();
    if p.fused_scores.len() != ids {
        return Err(UnpackError::Scores {
            scores: p.fused_scores.len(),
            ids,
        });
    }
    let mut out: Vec<Unpacked<'_>> = id_columns::split(&p.ids, &p.id_ends, FIELDS)?
        .into_iter()
        .zip(&p.fused_scores)
        .map(|(item_id, &fused_score)| Unpacked {
            item_id,
            fused_score,
            sources: SmallVec::new(),
        })
        .collect();
    // Each candidate's sources in channel order, as the merge lists them, whatever order the
    // columns come in.
    let mut columns: Vec<(usize, Option<Channel>, &PackedSources)> = p
        .sources
        .iter()
        .enumerate()
        .map(|(at, column)| (at, column.channel().known(), column))
        .collect();
    columns.sort_by_key(|&(at, channel, _)| (channel.map(|c| c as usize), at));
    for (at, channel, column) in columns {
        let (positions, ranks, scores) = (column.positions.len(), column.ranks.len(), column.scores.len());
        if positions != ranks || positions != scores {
            return Err(UnpackError::Columns {
                at,
                positions,
                ranks,
                scores,
            });
        }
        for ((&position, &rank), &score) in column.positions.iter().zip(&column.ranks).zip(&column.scores) {
            let Some(candidate) = out.get_mut(position as usize) else {
                return Err(UnpackError::Position { at, position, ids });
            };
            if let Some(channel) = channel {
                candidate.sources.push(Lineage { channel, score, rank });
            }
        }
    }
    Ok(out)
}

/// The columns as one message per candidate (what a caller that did not ask for columns gets).
pub fn to_messages(p: &PackedCandidates) -> Result<Vec<proto::Candidate>, UnpackError> {
    Ok(unpack(p)?
        .into_iter()
        .map(|c| super::candidate_message(c.item_id.to_string(), c.fused_score, &c.sources))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage(channel: Channel, rank: u32, score: f32) -> Lineage {
        Lineage { channel, score, rank }
    }

    fn sample() -> Vec<(&'static str, f32, Vec<Lineage>)> {
        vec![
            (
                "tt0001",
                0.9,
                vec![lineage(Channel::ItemCf, 1, 3.5), lineage(Channel::Hot, 4, 0.7)],
            ),
            ("tt0002", 0.5, vec![lineage(Channel::Hot, 1, 0.9)]),
            // Sources need not exist (a forced item), and ids need not be ASCII.
            ("é-⁂", 0.25, vec![]),
            (
                "tt0004",
                0.1,
                vec![
                    lineage(Channel::ItemCf, 7, 1.0),
                    lineage(Channel::Hot, 9, 0.1),
                    lineage(Channel::Cooc, 2, 4.0),
                ],
            ),
            // An empty id packs and unpacks (validation is the producer's job).
            ("", 0.0, vec![lineage(Channel::Tag, 3, 0.2)]),
        ]
    }

    fn pack(items: &[(&str, f32, Vec<Lineage>)]) -> PackedCandidates {
        let mut p = Packer::with_capacity(items.len());
        for (id, fused, sources) in items {
            p.push(id, *fused, sources);
        }
        assert_eq!(p.len(), items.len());
        p.finish()
    }

    #[test]
    fn round_trips_ids_scores_and_sources_in_order() {
        let items = sample();
        let packed = pack(&items);
        // One column per channel, in first-seen order.
        let channels: Vec<i32> = packed.sources.iter().map(|c| c.channel).collect();
        assert_eq!(
            channels,
            [
                proto::Channel::ItemCf as i32,
                proto::Channel::Hot as i32,
                proto::Channel::Cooc as i32,
                proto::Channel::Tag as i32
            ]
        );
        assert_eq!(packed.sources[1].positions, [0, 1, 3]);
        let back = unpack(&packed).unwrap();
        assert_eq!(back.len(), items.len());
        for (b, (id, fused, sources)) in back.iter().zip(&items) {
            assert_eq!(b.item_id, *id);
            assert_eq!(b.fused_score, *fused);
            assert_eq!(b.sources.as_slice(), sources.as_slice());
        }
        // The message form says the same.
        let messages = to_messages(&packed).unwrap();
        assert_eq!(messages[3].sources.len(), 3);
        assert_eq!(messages[3].sources[2].channel_name(), "cooc");
        assert_eq!(messages[2].item_id, "é-⁂");
    }

    #[test]
    fn sources_come_back_in_channel_order_whatever_the_columns_order() {
        let items = sample();
        let mut packed = pack(&items);
        packed.sources.reverse();
        for (b, (_, _, sources)) in unpack(&packed).unwrap().iter().zip(&items) {
            assert_eq!(b.sources.as_slice(), sources.as_slice());
        }
    }

    #[test]
    fn nothing_packs_to_nothing() {
        let packed = Packer::default().finish();
        assert!(unpack(&packed).unwrap().is_empty());
        assert_eq!(packed, PackedCandidates::default());
    }

    #[test]
    fn a_channel_this_build_does_not_know_is_left_out() {
        let mut packed = pack(&sample());
        packed.sources[1].channel = 99;
        let back = unpack(&packed).unwrap();
        assert_eq!(back[1].sources.len(), 0);
        assert_eq!(back[0].sources.as_slice(), &[lineage(Channel::ItemCf, 1, 3.5)]);
    }

    #[test]
    fn columns_that_disagree_are_refused_with_the_field() {
        let good = pack(&sample());
        let err = |f: &dyn Fn(&mut PackedCandidates)| {
            let mut p = good.clone();
            f(&mut p);
            unpack(&p).unwrap_err()
        };
        assert_eq!(
            err(&|p| {
                p.fused_scores.pop();
            }),
            UnpackError::Scores { scores: 4, ids: 5 }
        );
        assert_eq!(
            err(&|p| p.id_ends[1] = 2).to_string(),
            "packed.id_ends[1] is 2: before the previous end or past the 24 bytes of ids"
        );
        assert!(matches!(
            err(&|p| p.id_ends[4] = 999),
            UnpackError::Ids(IdsError::End { at: 4, .. })
        ));
        // Cutting "é" in half.
        assert!(matches!(
            err(&|p| p.id_ends[1] = 13),
            UnpackError::Ids(IdsError::Utf8 { .. })
        ));
        assert_eq!(
            err(&|p| p.ids.push(b'x')),
            UnpackError::Ids(IdsError::Trailing { fields: FIELDS, len: 1 })
        );
        assert!(matches!(
            err(&|p| {
                p.sources[0].ranks.pop();
            }),
            UnpackError::Columns { at: 0, .. }
        ));
        assert_eq!(
            err(&|p| p.sources[2].positions[0] = 5).to_string(),
            "packed.sources[2].positions has 5 for 5 candidates"
        );
    }

    #[test]
    fn is_smaller_on_the_wire_than_a_message_per_candidate() {
        use prost::Message;
        let items: Vec<(String, f32, Vec<Lineage>)> = (0..1000)
            .map(|i| {
                let sources = (0..1 + i % 3)
                    .map(|k| lineage(Channel::ALL[(i + k) % Channel::ALL.len()], (i / 3 + 1) as u32, 0.5))
                    .collect();
                (format!("tt{i:07}"), 1.0 / (1 + i) as f32, sources)
            })
            .collect();
        let mut p = Packer::with_capacity(items.len());
        for (id, fused, sources) in &items {
            p.push(id, *fused, sources);
        }
        let packed = p.finish();
        let messages = proto::RecallResponse {
            candidates: to_messages(&packed).unwrap(),
            ..Default::default()
        };
        let columns = proto::RecallResponse {
            packed: Some(packed),
            ..Default::default()
        };
        let (m, c) = (messages.encoded_len(), columns.encoded_len());
        assert!(c < m, "packed {c} bytes, messages {m}");
        let decoded = proto::RecallResponse::decode(columns.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            to_messages(decoded.packed.as_ref().unwrap()).unwrap(),
            messages.candidates
        );
    }
}
