//! Item ids on the wire as two columns: every id's UTF-8 bytes in one buffer, and where each
//! one ends (exclusive byte offsets, ascending). Five hundred ids cost two allocations to
//! encode and decode where `repeated string` costs one per id. Recall's answer, ranking's and
//! rerank's requests and the feature service's `GetItems` carry their ids this way (the call
//! that falls back to strings for an older peer is `link::newer_form_first`). Pure: no I/O.

use thiserror::Error;

/// The two fields' names in the caller's message, for errors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fields {
    pub ids: &'static str,
    pub ends: &'static str,
}

/// Columns that do not fit together; each names the field.
#[derive(Debug, Error, PartialEq)]
pub enum IdsError {
    #[error("{}[{at}] is {end}: before the previous end or past the {len} bytes of ids", fields.ends)]
    End {
        fields: Fields,
        at: usize,
        end: u32,
        len: usize,
    },
    #[error("{}: the id ending at byte {end} is not UTF-8", fields.ids)]
    Utf8 { fields: Fields, end: u32 },
    #[error("{} has {len} bytes after the last id", fields.ids)]
    Trailing { fields: Fields, len: usize },
}

/// Appends `id` to the columns.
pub fn push(ids: &mut Vec<u8>, ends: &mut Vec<u32>, id: &str) {
    ids.extend_from_slice(id.as_bytes());
    ends.push(ids.len() as u32);
}

/// The columns of `items`, in order.
pub fn pack<'a>(items: impl IntoIterator<Item = &'a str>) -> (Vec<u8>, Vec<u32>) {
    let items = items.into_iter();
    let mut ends = Vec::with_capacity(items.size_hint().0);
    let mut ids = Vec::with_capacity(ends.capacity() * 8);
    for id in items {
        push(&mut ids, &mut ends, id);
    }
    (ids, ends)
}

/// A message's ids when it may carry them either way, a string each (`strings`, the older
/// form) or as columns (`columns`): `None` when the columns are empty (the caller reads its
/// strings), the ids when only the columns are set; both at once is refused, naming the two.
pub fn instead_of_strings<'a>(
    ids: &'a [u8],
    ends: &[u32],
    strings_set: bool,
    fields: Fields,
    names: (&str, &str),
) -> Result<Option<Vec<&'a str>>, String> {
    if ids.is_empty() && ends.is_empty() {
        return Ok(None);
    }
    if strings_set {
        let (strings, columns) = names;
        return Err(format!("{strings} and {columns} are both set: send one"));
    }
    split(ids, ends, fields).map(Some).map_err(|e| e.to_string())
}

/// The ids back, in order, borrowed from `ids`; refuses columns that disagree rather than
/// guess.
pub fn split<'a>(ids: &'a [u8], ends: &[u32], fields: Fields) -> Result<Vec<&'a str>, IdsError> {
    let mut out = Vec::with_capacity(ends.len());
    let mut start = 0usize;
    for (at, &end) in ends.iter().enumerate() {
        let stop = end as usize;
        if stop < start || stop > ids.len() {
            return Err(IdsError::End {
                fields,
                at,
                end,
                len: ids.len(),
            });
        }
        out.push(std::str::from_utf8(&ids[start..stop]).map_err(|_| IdsError::Utf8 { fields, end })?);
        start = stop;
    }
    if start != ids.len() {
        return Err(IdsError::Trailing {
            fields,
            len: ids.len() - start,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: Fields = Fields {
        ids: "p.ids",
        ends: "p.ends",
    };

    #[test]
    fn round_trips_any_ids_in_order() {
        // Empty ids and non-ASCII ones included; the empty list too.
        for items in [vec![], vec![""], vec!["tt0001", "", "é-⁂", "tt0001", "x"]] {
            let (ids, ends) = pack(items.iter().copied());
            assert_eq!(ends.len(), items.len());
            assert_eq!(split(&ids, &ends, FIELDS).unwrap(), items);
        }
    }

    #[test]
    fn columns_that_disagree_are_refused_naming_the_field() {
        let (ids, ends) = pack(["ab", "é", "cd"]);
        assert_eq!(ends, [2, 4, 6]);
        let err = |ids: &[u8], ends: &[u32]| split(ids, ends, FIELDS).unwrap_err().to_string();
        assert_eq!(
            err(&ids, &[2, 1, 6]),
            "p.ends[1] is 1: before the previous end or past the 6 bytes of ids"
        );
        assert_eq!(
            err(&ids, &[2, 4, 7]),
            "p.ends[2] is 7: before the previous end or past the 6 bytes of ids"
        );
        // Cutting "é" in half.
        assert_eq!(err(&ids, &[2, 3, 6]), "p.ids: the id ending at byte 3 is not UTF-8");
        assert_eq!(err(&ids, &[2, 4]), "p.ids has 2 bytes after the last id");
        assert_eq!(err(&ids, &[]), "p.ids has 6 bytes after the last id");
    }

    #[test]
    fn columns_stand_in_for_strings_only_alone() {
        let (ids, ends) = pack(["ab", "c"]);
        fn read<'a>(ids: &'a [u8], ends: &[u32], strings_set: bool) -> Result<Option<Vec<&'a str>>, String> {
            instead_of_strings(ids, ends, strings_set, FIELDS, ("s", "p"))
        }
        assert_eq!(read(&[], &[], true), Ok(None));
        assert_eq!(read(&[], &[], false), Ok(None));
        assert_eq!(read(&ids, &ends, false), Ok(Some(vec!["ab", "c"])));
        assert_eq!(
            read(&ids, &ends, true),
            Err("s and p are both set: send one".to_string())
        );
        assert_eq!(
            read(&ids, &[], false),
            Err("p.ids has 3 bytes after the last id".to_string())
        );
    }
}
