//! Fixed-depth radix trees keyed by page number for the IOVA allocator: [`RadixMap`] (start page
//! → page count of every live allocation) and [`RadixSet`] (start pages of the free blocks of one
//! buddy order), so that SPEC.md "Costs must not grow with the number of live mappings" holds for
//! the allocator's own bookkeeping: the same cost at 1 and at 1M live allocations.
//!
//! # Why not `BTreeMap` and `BTreeSet`
//!
//! A `BTreeMap` is O(log n): at 1M entries a lookup walks six or seven nodes and scans up to
//! eleven keys in each, and that depth is what made alloc+free 2.5 times slower at 1M live than
//! at 1 (measured). And a `BTreeSet` that goes from empty to one element and back, which is what a
//! buddy order's free list does on every split and merge, allocates and frees a node each time:
//! heap traffic on the map/unmap path (the kernel heap is a linked-list allocator). Here the depth
//! depends only on the width of the key space (6 bits per level: 5 levels for the pages of a
//! 39-bit space, 6 for 48 bits), never on the number of entries. Each node carries a 64-bit
//! occupancy word (bit `i`: slot `i` holds an entry, or its child subtree does), so finding the
//! entry at or before a key ([`RadixMap::at_or_before`], used to find the allocation containing an
//! address and the highest free block below a limit) is one `leading_zeros` per level.
//!
//! Nodes emptied by a removal are kept (their occupancy bit is cleared in the parent), so a
//! steady alloc+free cycle never touches the heap; `prune` frees them, and the allocator calls it
//! from `drain_caches`.

use alloc::boxed::Box;

/// Page-number bits resolved per level.
const BITS: u32 = 6;
/// Slots per node.
const FAN: usize = 1 << BITS;

/// One radix node: inner levels hold children, the last level holds page counts.
enum Node {
    /// Bit `i` of `occ`: `kids[i]` holds at least one entry. A child may exist while its bit is
    /// clear (emptied, kept for reuse).
    Inner {
        occ: u64,
        kids: [Option<Box<Node>>; FAN],
    },
    /// Bit `i` of `occ`: `pages[i]` is the page count of a live allocation starting there.
    Leaf { occ: u64, pages: [u64; FAN] },
}

impl Node {
    fn new(level: u32) -> Box<Self> {
        Box::new(if level == 0 {
            Node::Leaf {
                occ: 0,
                pages: [0; FAN],
            }
        } else {
            Node::Inner {
                occ: 0,
                kids: [const { None }; FAN],
            }
        })
    }

    fn occ(&self) -> u64 {
        match self {
            Node::Inner { occ, .. } | Node::Leaf { occ, .. } => *occ,
        }
    }
}

/// The slot index of `key` at `level` (0 = leaf).
fn digit(key: u64, level: u32) -> usize {
    ((key >> (level * BITS)) & (FAN as u64 - 1)) as usize
}

/// The highest set bit of `occ` at or below `i`.
fn highest_at_or_below(occ: u64, i: usize) -> Option<usize> {
    let masked = occ & (u64::MAX >> (FAN - 1 - i));
    (masked != 0).then(|| 63 - masked.leading_zeros() as usize)
}

/// Map from a key (a start page number) to a non-zero value (a page count), see the module docs.
pub(super) struct RadixMap {
    /// Levels below the root's (the root is at level `top`, leaves at 0).
    top: u32,
    root: Box<Node>,
    len: usize,
}

impl RadixMap {
    /// An empty map for keys `0..=max_key`.
    pub(super) fn new(max_key: u64) -> Self {
        let bits = (64 - max_key.leading_zeros()).max(1);
        let top = bits.div_ceil(BITS) - 1;
        Self {
            top,
            root: Node::new(top),
            len: 0,
        }
    }

    /// Whether `key` fits in the map's key space.
    fn in_range(&self, key: u64) -> bool {
        (self.top + 1) * BITS >= 64 || key >> ((self.top + 1) * BITS) == 0
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The page count recorded at `key`.
    pub(super) fn get(&self, key: u64) -> Option<u64> {
        if !self.in_range(key) {
            return None;
        }
        let mut node = &*self.root;
        let mut level = self.top;
        loop {
            let i = digit(key, level);
            match node {
                Node::Inner { occ, kids } => {
                    if occ & (1 << i) == 0 {
                        return None;
                    }
                    node = kids[i].as_deref()?;
                    level -= 1;
                }
                Node::Leaf { occ, pages } => {
                    return (occ & (1 << i) != 0).then_some(pages[i]);
                }
            }
        }
    }

    /// Records `pages` at `key`, replacing any entry there. `key` must be in the range given at
    /// creation (the allocator only records page numbers of its own space); `pages` must be
    /// non-zero.
    pub(super) fn insert(&mut self, key: u64, pages: u64) {
        debug_assert!(self.in_range(key) && pages > 0);
        let mut node = &mut *self.root;
        let mut level = self.top;
        loop {
            let i = digit(key, level);
            match node {
                Node::Inner { occ, kids } => {
                    *occ |= 1 << i;
                    node = kids[i].get_or_insert_with(|| Node::new(level - 1));
                    level -= 1;
                }
                Node::Leaf { occ, pages: slots } => {
                    if *occ & (1 << i) == 0 {
                        self.len += 1;
                    }
                    *occ |= 1 << i;
                    slots[i] = pages;
                    return;
                }
            }
        }
    }

    /// Removes and returns the entry at `key`.
    pub(super) fn remove(&mut self, key: u64) -> Option<u64> {
        self.clear(key, u64::MAX)
    }

    /// ORs `mask` (non-zero) into the value at `key` (0 when absent), in one walk: how
    /// [`RadixSet`] adds a member to its word. `key` must be in the range given at creation.
    fn or_bits(&mut self, key: u64, mask: u64) {
        debug_assert!(self.in_range(key) && mask != 0);
        let mut node = &mut *self.root;
        let mut level = self.top;
        loop {
            let i = digit(key, level);
            match node {
                Node::Inner { occ, kids } => {
                    *occ |= 1 << i;
                    node = kids[i].get_or_insert_with(|| Node::new(level - 1));
                    level -= 1;
                }
                Node::Leaf { occ, pages } => {
                    if *occ & (1 << i) == 0 {
                        self.len += 1;
                        *occ |= 1 << i;
                        pages[i] = mask;
                    } else {
                        pages[i] |= mask;
                    }
                    return;
                }
            }
        }
    }

    /// Clears `mask` in the value at `key`, removing the entry when it becomes 0: how
    /// [`RadixSet`] removes a member. Whether any bit of `mask` was set.
    fn clear_bits(&mut self, key: u64, mask: u64) -> bool {
        self.clear(key, mask).is_some()
    }

    /// Clears `mask` in the value at `key` and returns the old value, or `None` (nothing changed)
    /// when no bit of `mask` was set there. An entry that becomes 0 is removed, and the
    /// occupancy bits of the subtrees that emptied are cleared.
    ///
    /// Iterative (one walk down; a second only when the leaf emptied): the common case is the
    /// hot path of every IOVA free.
    fn clear(&mut self, key: u64, mask: u64) -> Option<u64> {
        if !self.in_range(key) {
            return None;
        }
        let mut node = &mut *self.root;
        let mut level = self.top;
        let (old, leaf_emptied) = loop {
            let i = digit(key, level);
            match node {
                Node::Inner { occ, kids } => {
                    if *occ & (1 << i) == 0 {
                        return None;
                    }
                    node = kids[i].as_deref_mut()?;
                    level -= 1;
                }
                Node::Leaf { occ, pages } => {
                    let old = pages[i];
                    if *occ & (1 << i) == 0 || old & mask == 0 {
                        return None;
                    }
                    pages[i] = old & !mask;
                    if pages[i] != 0 {
                        return Some(old);
                    }
                    *occ &= !(1 << i);
                    break (old, *occ == 0);
                }
            }
        };
        self.len -= 1;
        if leaf_emptied {
            self.clear_emptied_path(key);
        }
        Some(old)
    }

    /// After a removal emptied the leaf on `key`'s path: clears, bottom up, the occupancy bit
    /// of every path subtree that is now empty (one walk per node that emptied).
    fn clear_emptied_path(&mut self, key: u64) {
        loop {
            let mut node = &mut *self.root;
            let mut level = self.top;
            let emptied = loop {
                let Node::Inner { occ, kids } = node else {
                    break false;
                };
                let i = digit(key, level);
                if *occ & (1 << i) == 0 {
                    break false;
                }
                let Some(kid) = kids[i].as_deref_mut() else {
                    break false;
                };
                if kid.occ() == 0 {
                    *occ &= !(1 << i);
                    // Walk again only when this node emptied too (its parent's bit then goes).
                    break *occ == 0;
                }
                node = kid;
                level -= 1;
            };
            if !emptied {
                return;
            }
        }
    }

    /// The entry with the greatest key at or below `key`, as `(key, pages)`.
    pub(super) fn at_or_before(&self, key: u64) -> Option<(u64, u64)> {
        let key = if self.in_range(key) {
            key
        } else {
            // Every stored key is smaller: search from the largest key of the space.
            u64::MAX >> (64 - (self.top + 1) * BITS)
        };
        Self::at_or_before_in(&self.root, self.top, key, 0)
    }

    /// [`RadixMap::at_or_before`] below `node` (at `level`), whose keys start with `prefix`.
    fn at_or_before_in(node: &Node, level: u32, key: u64, prefix: u64) -> Option<(u64, u64)> {
        let i = digit(key, level);
        match node {
            Node::Leaf { occ, pages } => {
                let j = highest_at_or_below(*occ, i)?;
                Some((prefix | j as u64, pages[j]))
            }
            Node::Inner { occ, kids } => {
                let shift = level * BITS;
                if occ & (1 << i) != 0 {
                    let kid = kids[i].as_deref()?;
                    let p = prefix | (i as u64) << shift;
                    if let Some(hit) = Self::at_or_before_in(kid, level - 1, key, p) {
                        return Some(hit);
                    }
                }
                let j = highest_at_or_below(*occ, i.checked_sub(1)?)?;
                Self::last_in(kids[j].as_deref()?, level - 1, prefix | (j as u64) << shift)
            }
        }
    }

    /// The greatest entry below `node` (at `level`), whose keys start with `prefix`.
    fn last_in(mut node: &Node, mut level: u32, mut prefix: u64) -> Option<(u64, u64)> {
        loop {
            match node {
                Node::Leaf { occ, pages } => {
                    let j = highest_at_or_below(*occ, FAN - 1)?;
                    return Some((prefix | j as u64, pages[j]));
                }
                Node::Inner { occ, kids } => {
                    let j = highest_at_or_below(*occ, FAN - 1)?;
                    prefix |= (j as u64) << (level * BITS);
                    node = kids[j].as_deref()?;
                    level -= 1;
                }
            }
        }
    }

    /// Frees every node whose subtree holds no entry (kept by [`RadixMap::remove`] for reuse).
    pub(super) fn prune(&mut self) {
        fn prune_in(node: &mut Node) {
            if let Node::Inner { occ, kids } = node {
                for (i, kid) in kids.iter_mut().enumerate() {
                    if *occ & (1 << i) == 0 {
                        *kid = None;
                    } else if let Some(k) = kid.as_deref_mut() {
                        prune_in(k);
                    }
                }
            }
        }
        prune_in(&mut self.root);
    }

    /// Number of allocated nodes (tests: shows that [`RadixMap::prune`] frees them).
    #[cfg(test)]
    pub(super) fn nodes(&self) -> usize {
        fn count(node: &Node) -> usize {
            match node {
                Node::Leaf { .. } => 1,
                Node::Inner { kids, .. } => {
                    1 + kids.iter().flatten().map(|k| count(k)).sum::<usize>()
                }
            }
        }
        count(&self.root)
    }

    /// Calls `f(key, pages)` for every entry in increasing key order.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn for_each(&self, mut f: impl FnMut(u64, u64)) {
        fn walk(node: &Node, level: u32, prefix: u64, f: &mut impl FnMut(u64, u64)) {
            match node {
                Node::Leaf { occ, pages } => {
                    for (i, &p) in pages.iter().enumerate() {
                        if occ & (1 << i) != 0 {
                            f(prefix | i as u64, p);
                        }
                    }
                }
                Node::Inner { occ, kids } => {
                    for (i, kid) in kids.iter().enumerate() {
                        if let (true, Some(k)) = (occ & (1 << i) != 0, kid.as_deref()) {
                            walk(k, level - 1, prefix | (i as u64) << (level * BITS), f);
                        }
                    }
                }
            }
        }
        walk(&self.root, self.top, 0, &mut f);
    }
}

/// A set of keys (start page numbers of free blocks, shifted right by the block's order): a
/// [`RadixMap`] from `key / 64` to the non-zero 64-bit word of members in that group.
pub(super) struct RadixSet {
    words: RadixMap,
}

impl RadixSet {
    /// An empty set for keys `0..=max_key`.
    pub(super) fn new(max_key: u64) -> Self {
        Self {
            words: RadixMap::new(max_key >> BITS),
        }
    }

    /// Whether the set is empty.
    pub(super) fn is_empty(&self) -> bool {
        self.words.len() == 0
    }

    /// Whether `key` is a member.
    pub(super) fn contains(&self, key: u64) -> bool {
        self.words
            .get(key >> BITS)
            .is_some_and(|w| w & (1 << (key & 63)) != 0)
    }

    /// Adds `key` (in the range given at creation).
    pub(super) fn insert(&mut self, key: u64) {
        self.words.or_bits(key >> BITS, 1 << (key & 63));
    }

    /// Removes `key`; whether it was a member.
    pub(super) fn remove(&mut self, key: u64) -> bool {
        self.words.clear_bits(key >> BITS, 1 << (key & 63))
    }

    /// The greatest member at or below `key`.
    pub(super) fn at_or_before(&self, key: u64) -> Option<u64> {
        let g = key >> BITS;
        let (mut hg, mut hw) = self.words.at_or_before(g)?;
        if hg == g {
            if let Some(j) = highest_at_or_below(hw, (key & 63) as usize) {
                return Some(g << BITS | j as u64);
            }
            // Nothing at or below `key` in its own group: the previous group's highest.
            (hg, hw) = self.words.at_or_before(g.checked_sub(1)?)?;
        }
        // Stored words are never zero.
        Some(hg << BITS | u64::from(63 - hw.leading_zeros()))
    }

    /// Frees nodes emptied by removals.
    pub(super) fn prune(&mut self) {
        self.words.prune();
    }

    /// Calls `f(key)` for every member in increasing order.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn for_each(&self, mut f: impl FnMut(u64)) {
        self.words.for_each(|g, w| {
            for j in 0..FAN as u64 {
                if w & (1 << j) != 0 {
                    f(g << BITS | j);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64),
        Get(u64),
        AtOrBefore(u64),
        Prune,
    }

    fn key() -> impl Strategy<Value = u64> {
        // Clustered keys (so nodes fill and empty), keys near a node boundary, and keys anywhere
        // (inserts mask them into the map's space; lookups also try keys past it).
        prop_oneof![
            0u64..200,
            (0u64..8, 0u32..64).prop_map(|(d, s)| (1u64 << s).wrapping_sub(d)),
            any::<u64>(),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (key(), 1u64..1 << 20).prop_map(|(k, p)| Op::Insert(k, p)),
            2 => key().prop_map(Op::Remove),
            1 => key().prop_map(Op::Get),
            2 => key().prop_map(Op::AtOrBefore),
            1 => Just(Op::Prune),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Model: a `BTreeMap`. Same answers for get, remove, at-or-before, length and order,
        /// for key spaces of 1 to 64 bits (the root's level count follows the width).
        #[test]
        fn radix_map_matches_btreemap(
            max_bits in 1u32..=64,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let max_key = u64::MAX >> (64 - max_bits);
            let mut m = RadixMap::new(max_key);
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, p) => {
                        let k = k & max_key;
                        m.insert(k, p);
                        model.insert(k, p);
                    }
                    Op::Remove(k) => prop_assert_eq!(m.remove(k), model.remove(&k)),
                    Op::Get(k) => prop_assert_eq!(m.get(k), model.get(&k).copied()),
                    Op::AtOrBefore(k) => prop_assert_eq!(
                        m.at_or_before(k),
                        model.range(..=k).next_back().map(|(&a, &b)| (a, b))
                    ),
                    Op::Prune => m.prune(),
                }
                prop_assert_eq!(m.len(), model.len());
            }
            let mut seen = Vec::new();
            m.for_each(|k, p| seen.push((k, p)));
            let want: Vec<(u64, u64)> = model.into_iter().collect();
            prop_assert_eq!(seen, want);
        }
    }

    #[derive(Debug, Clone)]
    enum SetOp {
        Insert(u64),
        Remove(u64),
        Contains(u64),
        AtOrBefore(u64),
        Prune,
    }

    fn set_op() -> impl Strategy<Value = SetOp> {
        prop_oneof![
            3 => key().prop_map(SetOp::Insert),
            2 => key().prop_map(SetOp::Remove),
            1 => key().prop_map(SetOp::Contains),
            2 => key().prop_map(SetOp::AtOrBefore),
            1 => Just(SetOp::Prune),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Model: a `BTreeSet`. Same answers for insert/remove/contains, at-or-before (within a
        /// 64-key word, across words and past the space), emptiness and order.
        #[test]
        fn radix_set_matches_btreeset(
            max_bits in 1u32..=64,
            ops in proptest::collection::vec(set_op(), 1..300),
        ) {
            let max_key = u64::MAX >> (64 - max_bits);
            let mut s = RadixSet::new(max_key);
            let mut model: alloc::collections::BTreeSet<u64> = Default::default();
            for op in ops {
                match op {
                    SetOp::Insert(k) => {
                        let k = k & max_key;
                        s.insert(k);
                        model.insert(k);
                    }
                    SetOp::Remove(k) => prop_assert_eq!(s.remove(k), model.remove(&k)),
                    SetOp::Contains(k) => prop_assert_eq!(s.contains(k), model.contains(&k)),
                    SetOp::AtOrBefore(k) => prop_assert_eq!(
                        s.at_or_before(k),
                        model.range(..=k).next_back().copied()
                    ),
                    SetOp::Prune => s.prune(),
                }
                prop_assert_eq!(s.is_empty(), model.is_empty());
            }
            let mut seen = Vec::new();
            s.for_each(|k| seen.push(k));
            prop_assert_eq!(seen, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn prune_frees_emptied_nodes_and_remove_keeps_them() {
        let mut m = RadixMap::new((1 << 27) - 1);
        let fresh = m.nodes();
        for k in (0..5000u64).map(|k| k * 977) {
            m.insert(k, 1);
        }
        let full = m.nodes();
        assert!(full > fresh);
        for k in (0..5000u64).map(|k| k * 977) {
            assert_eq!(m.remove(k), Some(1));
        }
        // Kept for reuse: a steady alloc+free cycle allocates no node.
        assert_eq!(m.nodes(), full);
        assert_eq!(m.at_or_before(u64::MAX), None);
        m.prune();
        assert_eq!(m.nodes(), fresh);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn depth_follows_the_key_width_not_the_entries() {
        assert_eq!(RadixMap::new(0).top, 0);
        assert_eq!(RadixMap::new(63).top, 0);
        assert_eq!(RadixMap::new(64).top, 1);
        assert_eq!(RadixMap::new((1 << 27) - 1).top, 4); // 39-bit IOVA space: 5 levels
        assert_eq!(RadixMap::new(u64::MAX).top, 10);
    }
}
