//! The in-order acknowledgement watermark (invariant 2 of DESIGN.md).

use std::collections::VecDeque;

/// Items in flight to a sink, released in push order once they and all their predecessors
/// are acknowledged.
///
/// The watch loop pushes one item per event it sends (for example the resourceVersion and
/// index update the event stands for) and gets a sequence number; the sink's
/// acknowledgements come back in any order; [`Watermark::ack`] returns the contiguous
/// acknowledged prefix, which is what may be checkpointed. A bookmark is pushed like an
/// event and acknowledged at once: it is released only behind every earlier event.
#[derive(Debug)]
pub struct Watermark<T> {
    /// Sequence number of `slots[0]`.
    head: u64,
    slots: VecDeque<Slot<T>>,
}

#[derive(Debug)]
struct Slot<T> {
    item: T,
    acked: bool,
}

impl<T> Default for Watermark<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Watermark<T> {
    pub fn new() -> Self {
        Self {
            head: 0,
            slots: VecDeque::new(),
        }
    }

    /// Adds an item; returns its sequence number (0, 1, 2, ... in push order).
    pub fn push(&mut self, item: T) -> u64 {
        let seq = self.next_seq();
        self.slots.push_back(Slot { item, acked: false });
        seq
    }

    /// The sequence number the next [`Watermark::push`] will return.
    pub fn next_seq(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    /// Acknowledges `seq` and returns the items newly released: the longest acknowledged
    /// prefix, in push order. Acknowledging a sequence number twice, one already released,
    /// or one never pushed does nothing.
    pub fn ack(&mut self, seq: u64) -> Vec<T> {
        if let Some(index) = seq.checked_sub(self.head)
            && let Some(slot) = usize::try_from(index)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
        {
            slot.acked = true;
        }
        let mut released = Vec::new();
        while self.slots.front().is_some_and(|s| s.acked) {
            let slot = self.slots.pop_front().expect("front exists");
            self.head += 1;
            released.push(slot.item);
        }
        released
    }

    /// Items pushed and not yet released (acknowledged or not).
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_acks_release_immediately() {
        let mut w = Watermark::new();
        assert_eq!(w.push("a"), 0);
        assert_eq!(w.push("b"), 1);
        assert_eq!(w.in_flight(), 2);
        assert_eq!(w.ack(0), ["a"]);
        assert_eq!(w.ack(1), ["b"]);
        assert!(w.is_empty());
        assert_eq!(w.push("c"), 2);
    }

    #[test]
    fn out_of_order_ack_waits_for_predecessors() {
        let mut w = Watermark::new();
        for i in 0..4 {
            w.push(i);
        }
        assert!(w.ack(2).is_empty());
        assert!(w.ack(1).is_empty());
        assert_eq!(w.in_flight(), 4);
        assert_eq!(w.ack(0), [0, 1, 2]);
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.ack(3), [3]);
        assert!(w.is_empty());
    }

    #[test]
    fn duplicate_stale_and_unknown_acks_are_ignored() {
        let mut w = Watermark::new();
        w.push('a');
        w.push('b');
        assert_eq!(w.ack(0), ['a']);
        assert!(w.ack(0).is_empty());
        assert!(w.ack(99).is_empty());
        assert!(w.ack(u64::MAX).is_empty());
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.ack(1), ['b']);
        assert!(w.ack(1).is_empty());
    }

    proptest! {
        /// For any acknowledgement order: every item is released exactly once, in push
        /// order, and only once all its predecessors are acknowledged.
        #[test]
        fn any_ack_order_releases_each_item_once_in_push_order(
            order in (1usize..60).prop_flat_map(|n| Just((0..n as u64).collect::<Vec<_>>()).prop_shuffle()),
            dup_every in 2usize..7,
        ) {
            let n = order.len();
            let mut w = Watermark::new();
            for i in 0..n as u64 {
                prop_assert_eq!(w.push(i), i);
            }
            let mut acked = vec![false; n];
            let mut released = Vec::new();
            for (k, &seq) in order.iter().enumerate() {
                acked[seq as usize] = true;
                let out = w.ack(seq);
                if k % dup_every == 0 {
                    // A duplicate ack never releases anything new.
                    prop_assert!(w.ack(seq).is_empty());
                }
                for item in out {
                    // Released only when it and every predecessor are acked.
                    prop_assert!(acked[..=item as usize].iter().all(|a| *a));
                    released.push(item);
                }
                // Everything acked with all predecessors acked has been released.
                let prefix = acked.iter().take_while(|a| **a).count();
                prop_assert_eq!(released.len(), prefix);
                prop_assert_eq!(w.in_flight(), n - prefix);
            }
            prop_assert_eq!(released, (0..n as u64).collect::<Vec<_>>());
            prop_assert!(w.is_empty());
        }
    }
}
