//! The call ids of one commit being staged, each with its partition day: kept in the pages'
//! own `call_id` arrays and found through a hash table of (page, row) positions, with no
//! string copied per call.

use arrow_array::{Array, StringArray};
use std::hash::BuildHasher;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// Call ids staged in the current commit; answers "is this id already in it?".
#[derive(Default)]
pub struct CommitKeys {
    pages: Vec<StringArray>,
    /// Per page, each row's partition day (UTC days since the epoch).
    days: Vec<Vec<i32>>,
    table: HashTable<(u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

impl CommitKeys {
    /// Ids held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn id(&self, (page, row): (u32, u32)) -> &str {
        self.pages[page as usize].value(row as usize)
    }

    /// Adds the non-null ids of `ids` (whose partition days are `days`) for which `keep(id)`
    /// holds and that are not held yet (repeats inside `ids` included); returns, per row,
    /// whether it was added.
    pub fn add_page(
        &mut self,
        ids: &StringArray,
        days: Vec<i32>,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Vec<bool> {
        let page = self.pages.len() as u32;
        self.pages.push(ids.clone());
        self.days.push(days);
        let Self {
            pages,
            table,
            hasher,
            ..
        } = self;
        let at = |&(p, r): &(u32, u32)| pages[p as usize].value(r as usize);
        let rehash = |p: &(u32, u32)| hasher.hash_one(at(p));
        table.reserve(ids.len(), rehash);
        (0..ids.len())
            .map(|row| {
                if ids.is_null(row) {
                    return false;
                }
                let id = ids.value(row);
                match table.entry(hasher.hash_one(id), |p| at(p) == id, rehash) {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(slot) => {
                        let add = keep(id);
                        if add {
                            slot.insert((page, row as u32));
                        }
                        add
                    }
                }
            })
            .collect()
    }

    /// Every id held with its partition day, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32)> {
        self.table
            .iter()
            .map(|&(page, row)| (self.id((page, row)), self.days[page as usize][row as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_added_once_across_and_within_pages() {
        let mut keys = CommitKeys::default();
        let a = StringArray::from(vec![Some("1"), Some("2"), None, Some("2"), Some("3")]);
        assert_eq!(
            keys.add_page(&a, vec![7; 5], |id| id != "3"),
            [true, true, false, false, false]
        );
        let b = StringArray::from(vec!["3", "1", "4"]);
        assert_eq!(
            keys.add_page(&b, vec![8, 8, 9], |_| true),
            [true, false, true]
        );
        let mut all: Vec<(&str, i32)> = keys.iter().collect();
        all.sort_unstable();
        assert_eq!(all, [("1", 7), ("2", 7), ("3", 8), ("4", 9)]);
        assert_eq!(keys.len(), 4);
    }
}
