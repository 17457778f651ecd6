//! Named records in a slab with a name index: what rooms and channels share.
//!
//! Slots are what the rest of the hub stores (a member list holds room slots, not
//! names), so a lookup by name happens once per request and every later step is an
//! index. The registry keeps the two views in step: a slot is in the name index exactly
//! while it is in the slab.

use std::ops::{Index, IndexMut};
use std::sync::Arc;

use slab::Slab;

use crate::hash::{Map, SeededState};

/// A record with a name: a room or a channel.
pub(crate) trait Named {
    fn name(&self) -> &Arc<str>;
}

pub(crate) struct Registry<T> {
    slab: Slab<T>,
    names: Map<Arc<str>, usize>,
}

impl<T: Named> Registry<T> {
    pub(crate) fn new(hasher: &SeededState) -> Self {
        Registry {
            slab: Slab::new(),
            names: Map::with_hasher(hasher.clone()),
        }
    }

    /// The slot of the record with this name.
    pub(crate) fn key(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    /// Stores a record whose name is not taken yet; returns its slot.
    pub(crate) fn insert(&mut self, record: T) -> usize {
        let name = record.name().clone();
        let k = self.slab.insert(record);
        let old = self.names.insert(name, k);
        debug_assert!(old.is_none(), "a name is registered once");
        k
    }

    pub(crate) fn remove(&mut self, k: usize) -> T {
        let record = self.slab.remove(k);
        self.names.remove(record.name());
        record
    }

    pub(crate) fn get(&self, k: usize) -> Option<&T> {
        self.slab.get(k)
    }

    pub(crate) fn by_name(&self, name: &str) -> Option<&T> {
        self.key(name).map(|k| &self.slab[k])
    }

    pub(crate) fn contains_name(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &T)> + '_ {
        self.slab.iter()
    }

    pub(crate) fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The name index and the slab agree.
    pub(crate) fn check(&self, what: &str) {
        for (k, r) in self.slab.iter() {
            assert_eq!(self.names.get(r.name()), Some(&k), "{what} name index");
        }
        assert_eq!(self.names.len(), self.slab.len(), "{what} name count");
    }
}

impl<T> Index<usize> for Registry<T> {
    type Output = T;
    fn index(&self, k: usize) -> &T {
        &self.slab[k]
    }
}

impl<T> IndexMut<usize> for Registry<T> {
    fn index_mut(&mut self, k: usize) -> &mut T {
        &mut self.slab[k]
    }
}
