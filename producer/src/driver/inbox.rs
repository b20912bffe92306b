//! The record channel: the handle pushes, the driver takes everything queued at once.
//!
//! ```text
//!   Producer::send ─► Outbox::send ─► lock, push, unlock ─┐ (wakes the driver only when the
//!   Producer::send_batch, flush ─────────────────────────┤  queue was empty)
//!                                                         ▼
//!   driver: Inbox::ready, try_recv_all ─► swaps the whole queue for its emptied one, admits it
//!                                         in order
//! ```
//!
//! Instead of a general channel (`tokio::sync::mpsc`: per message a counter, a slot claim, a
//! ready bit and a waker check, all on lines both threads write): a mutex taken once per push
//! by the handle and once per drain by the driver, and two vectors that trade places, so that
//! steady sending allocates nothing. Order is the push order, which a flush relies on (it
//! covers exactly the records sent before it).
//!
//! Backpressure is not the channel's: every record in it holds buffer space (a [`Grant`] or a
//! batch's permit), so what it holds stays under `max_buffered_bytes`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, Semaphore};

use super::messages::{Grant, Incoming, Pending, Reply};

#[derive(Debug, Default)]
struct State {
    queued: Vec<Incoming>,
    /// The driver stopped taking (closed, or dropped): sends fail and hand the message back.
    closed: bool,
    /// The handle is gone: once `queued` is drained, the driver stops.
    sender_gone: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the driver when a push finds the queue empty, or the handle goes.
    wake: Notify,
}

impl Shared {
    /// The state, even after a panic while it was held (every change to it is a single push,
    /// swap or flag: none leaves it half done).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A channel between the handle ([`Outbox`]) and the driver ([`Inbox`]); the inbox gives back
/// the buffer space of whatever is left in it when it is dropped.
pub(crate) fn channel(permits: Arc<Semaphore>) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared::default());
    (
        Outbox {
            shared: Arc::clone(&shared),
        },
        Inbox {
            shared,
            spare: Vec::new(),
            permits,
        },
    )
}

/// The handle's end (one per producer, held by its shared state).
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues `m`, or hands it back when the driver is gone.
    #[allow(
        clippy::result_large_err,
        reason = "the message comes back by value to give its records back"
    )]
    pub(crate) fn send(&self, m: Incoming) -> Result<(), Incoming> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(m);
        }
        let was_empty = state.queued.is_empty();
        state.queued.push(m);
        drop(state);
        // A non-empty queue has a wake-up on its way (or the driver is draining it).
        if was_empty {
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.wake.notify_one();
    }
}

/// The driver's end. Dropped with the driver's task (abort, panic, the runtime shut down), it
/// closes the channel and gives back the buffer space of the records still in it, which no
/// ledger has counted yet; sends after that fail, and their handle gives the space back.
#[derive(Debug)]
pub(crate) struct Inbox {
    shared: Arc<Shared>,
    /// The emptied vector traded for the queue at the next drain.
    spare: Vec<Incoming>,
    permits: Arc<Semaphore>,
}

impl Inbox {
    /// Waits until something is queued (`true`: take it with [`try_recv_all`]) or the handle
    /// is gone with nothing left (`false`). Cancel-safe: it takes nothing.
    ///
    /// [`try_recv_all`]: Self::try_recv_all
    pub(crate) async fn ready(&self) -> bool {
        loop {
            {
                let state = self.shared.lock();
                if !state.queued.is_empty() {
                    return true;
                }
                if state.sender_gone {
                    return false;
                }
            }
            self.shared.wake.notified().await;
        }
    }

    /// Takes what is queued now, in order, without waiting. The records not taken from it when
    /// it is dropped (the driver panicked while admitting one) give their buffer space back:
    /// no ledger has counted them, and they are in the queue no more.
    pub(crate) fn try_recv_all(&mut self) -> Taken<'_> {
        {
            let mut state = self.shared.lock();
            if !state.queued.is_empty() {
                std::mem::swap(&mut state.queued, &mut self.spare);
            }
        }
        Taken {
            drain: self.spare.drain(..),
            permits: &self.permits,
        }
    }

    /// Refuses further sends (they fail and hand their message back); what is queued can
    /// still be taken.
    pub(crate) fn close(&mut self) {
        self.shared.lock().closed = true;
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.close();
        let queued = std::mem::take(&mut self.shared.lock().queued);
        give_back(&self.permits, self.spare.drain(..).chain(queued));
    }
}

/// What [`Inbox::try_recv_all`] took: an iterator over the messages, in order.
#[derive(Debug)]
pub(crate) struct Taken<'a> {
    drain: std::vec::Drain<'a, Incoming>,
    permits: &'a Semaphore,
}

impl Iterator for Taken<'_> {
    type Item = Incoming;

    fn next(&mut self) -> Option<Incoming> {
        self.drain.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.drain.size_hint()
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        give_back(self.permits, self.drain.by_ref());
    }
}

/// Gives the buffer space of `messages`, which no ledger counts, back to the pool.
fn give_back(permits: &Semaphore, messages: impl Iterator<Item = Incoming>) {
    let bytes = messages
        .map(|m| match m {
            Incoming::One(Pending {
                reply: Reply::One(_, Grant(g)),
                ..
            }) => g as usize,
            // A batch's permit is returned as it drops.
            _ => 0,
        })
        .fold(0usize, usize::saturating_add);
    if bytes > 0 {
        permits.add_permits(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinesis_core::{PartitionKey, UserRecord};

    fn one(grant: u32) -> (Incoming, crate::receipt::PutReceipt) {
        let (tx, rx) = crate::receipt::receipt();
        let record = UserRecord::new(PartitionKey::new("k").unwrap(), None, "x".into());
        (Incoming::one(record, tx, Grant(grant)), rx)
    }

    fn grant_of(m: &Incoming) -> u32 {
        match m {
            Incoming::One(Pending {
                reply: Reply::One(_, Grant(g)),
                ..
            }) => *g,
            _ => panic!("not a single record"),
        }
    }

    #[tokio::test]
    async fn messages_come_out_in_order_and_the_end_after_the_last() {
        let (tx, mut rx) = channel(Arc::new(Semaphore::new(0)));
        for g in 1..=3 {
            tx.send(one(g).0).unwrap();
        }
        assert!(rx.ready().await);
        let got: Vec<u32> = rx.try_recv_all().map(|m| grant_of(&m)).collect();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(rx.try_recv_all().count(), 0);
        // A push to an empty queue wakes a waiting driver.
        let waiting = tokio::spawn(async move {
            assert!(rx.ready().await);
            let got: Vec<u32> = rx.try_recv_all().map(|m| grant_of(&m)).collect();
            (rx, got)
        });
        tokio::task::yield_now().await;
        tx.send(one(4).0).unwrap();
        let (mut rx, got) = waiting.await.unwrap();
        assert_eq!(got, [4]);
        // The handle gone: what was queued first, then the end.
        tx.send(one(5).0).unwrap();
        drop(tx);
        assert!(rx.ready().await);
        assert_eq!(rx.try_recv_all().count(), 1);
        assert!(!rx.ready().await);
    }

    #[test]
    fn a_closed_inbox_hands_sends_back_and_still_gives_what_was_queued() {
        let (tx, mut rx) = channel(Arc::new(Semaphore::new(0)));
        tx.send(one(1).0).unwrap();
        rx.close();
        let refused = tx.send(one(2).0).unwrap_err();
        assert_eq!(grant_of(&refused), 2);
        assert_eq!(rx.try_recv_all().count(), 1);
    }

    #[test]
    fn a_dropped_inbox_gives_back_the_space_of_what_is_still_in_it() {
        let permits = Arc::new(Semaphore::new(1000));
        permits.try_acquire_many(300).unwrap().forget();
        let (tx, rx) = channel(Arc::clone(&permits));
        let (a, receipt_a) = one(100);
        let (b, _receipt_b) = one(200);
        tx.send(a).unwrap();
        tx.send(b).unwrap();
        drop(rx);
        assert_eq!(permits.available_permits(), 1000);
        // Closed: a later send comes back to its handle (which gives its grant back itself).
        assert!(tx.send(one(1).0).is_err());
        // The receipt learns the record was never settled.
        assert!(matches!(
            futures::executor::block_on(receipt_a),
            Err(crate::receipt::ReceiptError::Lost)
        ));
    }

    /// The driver panicked while admitting a record from a drain: the records after it in the
    /// same drain (taken from the queue, counted by no ledger) give their space back as the
    /// drain unwinds.
    #[test]
    fn a_drain_dropped_part_way_gives_back_the_space_of_the_rest() {
        let permits = Arc::new(Semaphore::new(1000));
        permits.try_acquire_many(700).unwrap().forget();
        let (tx, mut rx) = channel(Arc::clone(&permits));
        for g in [100, 200, 400] {
            tx.send(one(g).0).unwrap();
        }
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut taken = rx.try_recv_all();
            // The first one reached a ledger (its space is the ledger's to give back).
            assert_eq!(taken.next().map(|m| grant_of(&m)), Some(100));
            panic!("admitting the first record");
        }));
        assert!(unwound.is_err());
        assert_eq!(permits.available_permits(), 300 + 200 + 400);
        // A drain consumed whole gives nothing back itself.
        tx.send(one(50).0).unwrap();
        assert_eq!(rx.try_recv_all().count(), 1);
        assert_eq!(permits.available_permits(), 900);
    }
}
