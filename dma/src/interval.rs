//! An ordered set of half-open intervals that answers "which interval starting at or below `a`
//! reaches furthest?" in O(log n): the lookup behind raw `sync_for_cpu` / `sync_for_device`
//! (SPEC.md "A physical-address DMA API", Linux's `dma_sync_single_*` on an address inside a
//! mapping).
//!
//! Why not a plain `BTreeMap` by start: on the direct path raw mappings may overlap (the same
//! buffer mapped twice, a small buffer inside a large one), so the nearest start at or below an
//! address need not contain it, and any bounded look-back misses a containing mapping that
//! started further down. Keeping, for every subtree, the largest end in it (an augmented
//! search tree, CLRS's interval tree) answers the question in one root-to-leaf walk.
//!
//! The tree is a treap keyed by `(start, id)` with priorities derived from the key by a fixed
//! mixing function (no random source in `no_std`); its expected height is O(log n) for any set
//! of distinct keys the DMA layer produces.

use alloc::boxed::Box;

/// Key of one interval: its start and a caller-chosen id that makes equal starts distinct.
pub(crate) type Key = (u64, u64);

struct Node {
    key: Key,
    end: u64,
    /// Largest `end` in this subtree.
    max_end: u64,
    prio: u64,
    left: Tree,
    right: Tree,
}

type Tree = Option<Box<Node>>;

fn max_end(t: &Tree) -> u64 {
    t.as_ref().map_or(0, |n| n.max_end)
}

impl Node {
    fn fix(&mut self) {
        self.max_end = self.end.max(max_end(&self.left)).max(max_end(&self.right));
    }
}

/// splitmix64's finaliser: a fixed bijection that spreads sequential ids.
fn priority((start, id): Key) -> u64 {
    let mut z = start ^ id.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Splits `t` into (keys < `key`, keys >= `key`).
fn split(t: Tree, key: Key) -> (Tree, Tree) {
    match t {
        None => (None, None),
        Some(mut n) => {
            if n.key < key {
                let (l, r) = split(n.right.take(), key);
                n.right = l;
                n.fix();
                (Some(n), r)
            } else {
                let (l, r) = split(n.left.take(), key);
                n.left = r;
                n.fix();
                (l, Some(n))
            }
        }
    }
}

/// Joins two treaps, every key of `a` below every key of `b`.
fn merge(a: Tree, b: Tree) -> Tree {
    match (a, b) {
        (None, t) | (t, None) => t,
        (Some(mut x), Some(mut y)) => {
            if x.prio >= y.prio {
                x.right = merge(x.right.take(), Some(y));
                x.fix();
                Some(x)
            } else {
                y.left = merge(Some(x), y.left.take());
                y.fix();
                Some(y)
            }
        }
    }
}

/// Removes the smallest key of `t` if it equals `key`; returns the tree and whether it did.
fn remove_first_if(t: Tree, key: Key) -> (Tree, bool) {
    match t {
        None => (None, false),
        Some(mut n) => {
            if n.left.is_some() {
                let (l, removed) = remove_first_if(n.left.take(), key);
                n.left = l;
                n.fix();
                (Some(n), removed)
            } else if n.key == key {
                (n.right.take(), true)
            } else {
                (Some(n), false)
            }
        }
    }
}

/// The intervals (see the module documentation).
#[derive(Default)]
pub(crate) struct IntervalIndex {
    root: Tree,
}

impl IntervalIndex {
    /// Adds `[key.0, end)`. The key must not be present.
    pub fn insert(&mut self, key: Key, end: u64) {
        let (l, r) = split(self.root.take(), key);
        let node = Box::new(Node {
            key,
            end,
            max_end: end,
            prio: priority(key),
            left: None,
            right: None,
        });
        self.root = merge(merge(l, Some(node)), r);
    }

    /// Removes the interval with `key`; whether it was present.
    pub fn remove(&mut self, key: Key) -> bool {
        let (l, r) = split(self.root.take(), key);
        let (r, removed) = remove_first_if(r, key);
        self.root = merge(l, r);
        removed
    }

    /// Number of intervals (a full walk; tests only).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        fn count(t: &Tree) -> usize {
            t.as_ref()
                .map_or(0, |n| 1 + count(&n.left) + count(&n.right))
        }
        count(&self.root)
    }

    /// Of the intervals starting at or below `a`, the key and end of one that ends last (`None`
    /// when none starts at or below `a`). It contains `[a, b)` iff its end is at least `b`; if
    /// it does not, no interval does.
    pub fn reaching_furthest(&self, a: u64) -> Option<(Key, u64)> {
        // Walk down once: every node with start <= a qualifies together with its left subtree.
        // Remember the best single node and the best whole left subtree seen.
        let mut best_node: Option<&Node> = None;
        let mut best_subtree: Option<&Node> = None;
        let mut cur = self.root.as_deref();
        while let Some(n) = cur {
            if n.key.0 <= a {
                if best_node.is_none_or(|b| n.end > b.end) {
                    best_node = Some(n);
                }
                if let Some(l) = n.left.as_deref() {
                    if best_subtree.is_none_or(|b| l.max_end > b.max_end) {
                        best_subtree = Some(l);
                    }
                }
                cur = n.right.as_deref();
            } else {
                cur = n.left.as_deref();
            }
        }
        let from_subtree = best_subtree.map(|s| {
            // Descend to the node whose end is the subtree's maximum.
            let mut n = s;
            loop {
                if n.end == n.max_end {
                    break n;
                }
                n = match (n.left.as_deref(), n.right.as_deref()) {
                    (Some(l), _) if l.max_end == n.max_end => l,
                    (_, Some(r)) => r,
                    // Unreachable while `max_end` is maintained; `n` is still a valid answer.
                    _ => break n,
                };
            }
        });
        let best = match (best_node, from_subtree) {
            (Some(x), Some(y)) if y.end > x.end => y,
            (Some(x), _) => x,
            (None, y) => y?,
        };
        Some((best.key, best.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// The answer by brute force.
    fn model(set: &[(Key, u64)], a: u64) -> Option<u64> {
        set.iter().filter(|(k, _)| k.0 <= a).map(|&(_, e)| e).max()
    }

    #[test]
    fn nested_interval_found_past_many_inner_starts() {
        let mut ix = IntervalIndex::default();
        ix.insert((0x1000, 1), 0x10_0000);
        for i in 0..1000 {
            ix.insert((0x2000 + i * 0x10, 2 + i), 0x2000 + i * 0x10 + 8);
        }
        assert_eq!(
            ix.reaching_furthest(0x8_0000),
            Some(((0x1000, 1), 0x10_0000))
        );
        assert_eq!(ix.reaching_furthest(0xfff), None);
        assert!(ix.remove((0x1000, 1)));
        assert!(!ix.remove((0x1000, 1)));
        let (_, end) = ix.reaching_furthest(0x8_0000).unwrap();
        assert!(end <= 0x8_0000, "nothing contains it any more");
        assert_eq!(ix.len(), 1000);
    }

    proptest! {
        #[test]
        fn prop_reaching_furthest_matches_brute_force(
            ops in prop::collection::vec((0u64..64, 1u64..32, any::<bool>()), 1..200),
            probes in prop::collection::vec(0u64..100, 1..20),
        ) {
            let mut ix = IntervalIndex::default();
            let mut set: Vec<(Key, u64)> = Vec::new();
            for (id, (start, len, remove)) in ops.into_iter().enumerate() {
                if remove && !set.is_empty() {
                    let (k, _) = set.remove(start as usize % set.len());
                    prop_assert!(ix.remove(k));
                } else {
                    let k = (start, id as u64);
                    ix.insert(k, start + len);
                    set.push((k, start + len));
                }
                prop_assert_eq!(ix.len(), set.len());
            }
            for a in probes {
                let got = ix.reaching_furthest(a);
                prop_assert_eq!(got.map(|(_, e)| e), model(&set, a));
                if let Some((k, e)) = got {
                    prop_assert!(k.0 <= a);
                    prop_assert!(set.contains(&(k, e)));
                }
            }
        }
    }
}
