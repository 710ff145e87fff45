//! One sled tree per key family (`ev/`, `pl/`, `ol/`, …), behind the calls of a single
//! `sled::Tree`.
//!
//! Why: measured, not derived. Back to back against the single shared tree, five pairs
//! of benchmark runs, perch spent 107–113 µs of CPU per event in the send phase against
//! 121–134 µs, and every pair went the same way (bench/README.md, session 5). The likely
//! reason is that the short-lived queue keys (`pl/`, `ol/`) no longer share index
//! nodes, and paths through them, with the long-lived journal (`ev/`, `fa/`, `dd/`): sled
//! clones a whole node (an index node has up to 256 children) for every change to it.
//! Leaf splits did not get rarer: a profile still puts about 13 % of perch's CPU in them.
//!
//! Keys keep their family prefix, so a key means the same in every layout and a store
//! written with the single tree `perch` moves over key by key (`migrate_single_tree`).
//! A key routes by its first three bytes; one of no known family (the `pe/` and `dx/`
//! keys of older layouts) lands in the old shared tree, where `repair` finds it.

use sled::{CompareAndSwapError, IVec, Iter, Tree};
use std::ops::{Bound, RangeBounds};

/// The tree every record lived in before families had their own.
const SINGLE_TREE: &str = "perch";

/// The key families, each with the name of its tree. (`ob/` held queued items before
/// `ol/` did; `repair` moves what an older store has there.)
const FAMILIES: [&[u8]; 10] = [
    b"ev/", b"fa/", b"pl/", b"ol/", b"dd/", b"ob/", b"se/", b"sx/", b"dl/", b"kv/",
];

pub struct Families {
    trees: Vec<Tree>,
    /// The old shared tree: keys of no known family, and records not yet migrated.
    single: Tree,
}

impl Families {
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        let trees = FAMILIES
            .iter()
            .map(|prefix| db.open_tree(&prefix[..2]))
            .collect::<sled::Result<Vec<_>>>()?;
        Ok(Families {
            trees,
            single: db.open_tree(SINGLE_TREE)?,
        })
    }

    /// Move the records of the single-tree layout into their families' trees; how many.
    /// Each is written to its family before it leaves the old tree, so a crash midway
    /// loses nothing and the next open finishes the move.
    pub fn migrate_single_tree(&self) -> sled::Result<usize> {
        let mut moved = 0;
        for kv in self.single.iter() {
            let (k, v) = kv?;
            let family = self.of(&k);
            if std::ptr::eq(family, &self.single) {
                continue;
            }
            family.insert(&k, v)?;
            self.single.remove(&k)?;
            moved += 1;
        }
        Ok(moved)
    }

    /// The tree that holds `key`.
    fn of(&self, key: &[u8]) -> &Tree {
        let prefix = key.get(..3).unwrap_or(key);
        FAMILIES
            .iter()
            .position(|f| *f == prefix)
            .map_or(&self.single, |i| &self.trees[i])
    }

    /// The tree of a range: that of its start (a range never spans two families).
    fn of_range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: &R) -> &Tree {
        match range.start_bound() {
            Bound::Included(k) | Bound::Excluded(k) => self.of(k.as_ref()),
            Bound::Unbounded => &self.single,
        }
    }

    pub fn insert<K: AsRef<[u8]>, V: Into<IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<IVec>> {
        self.of(key.as_ref()).insert(key, value)
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        self.of(key.as_ref()).remove(key)
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        self.of(key.as_ref()).get(key)
    }

    pub fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<bool> {
        self.of(key.as_ref()).contains_key(key)
    }

    pub fn compare_and_swap<K, OV, NV>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), CompareAndSwapError>>
    where
        K: AsRef<[u8]>,
        OV: AsRef<[u8]>,
        NV: Into<IVec>,
    {
        self.of(key.as_ref()).compare_and_swap(key, old, new)
    }

    pub fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> Iter {
        self.of(prefix.as_ref()).scan_prefix(prefix)
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        self.of_range(&range).range(range)
    }
}
