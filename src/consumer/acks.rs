//! Acks, coalesced: a delivery is acked only after its results were confirmed (its task
//! reports it here then), and when the oldest outstanding deliveries are all done, one
//! `basic.ack` with `multiple` acks that whole run instead of one frame each. The broker
//! then handles one ack per run, and the consumer's I/O loop sends one frame. A delivery
//! done while an older one is still running is acked alone at once, so a slow task
//! never holds the others' prefetch slots.
//!
//! Safety of `multiple`: an ack with `multiple` up to tag T acks every unacked delivery
//! with a tag ≤ T on the channel. Every tag ≤ T that this consumer has taken from the
//! subscription is in the book, and T is only sent once all of them are done: confirmed
//! (ackable) or settled by their task (nacked, which the task sent, on the same channel,
//! before reporting it; or acked alone earlier). Deliveries not yet taken from the
//! subscription all have tags above every taken one.

use std::collections::BTreeMap;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Taken from the subscription, being processed.
    Running,
    /// Its results are confirmed: ack it.
    Confirmed,
    /// Acked alone or nacked already: nothing more to send for it.
    Settled,
}

/// The outstanding deliveries of one channel, by delivery tag.
#[derive(Debug, Default)]
pub struct AckBook {
    tags: BTreeMap<u64, State>,
}

/// One frame to send: `basic.ack` of `tag`, with `multiple` or alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub tag: u64,
    pub multiple: bool,
}

impl AckBook {
    /// A delivery was taken from the subscription (in tag order).
    pub fn taken(&mut self, tag: u64) {
        self.tags.insert(tag, State::Running);
    }

    /// Its results were confirmed: it may be acked.
    pub fn confirmed(&mut self, tag: u64) {
        if let Some(state) = self.tags.get_mut(&tag) {
            *state = State::Confirmed;
        }
    }

    /// Its task nacked it (or otherwise answered it) itself.
    pub fn settled(&mut self, tag: u64) {
        if let Some(state) = self.tags.get_mut(&tag) {
            *state = State::Settled;
        }
    }

    /// The acks that make every confirmed delivery acked: one `multiple` ack for the
    /// run of done deliveries at the head, single acks for confirmed ones behind a
    /// delivery still running.
    pub fn take_acks(&mut self) -> Vec<Ack> {
        let mut acks = Vec::new();
        // The head: done deliveries up to the first one still running.
        let mut head_end = None;
        let mut last_confirmed = None;
        for (&tag, &state) in &self.tags {
            match state {
                State::Running => break,
                State::Confirmed => last_confirmed = Some(tag),
                State::Settled => {}
            }
            head_end = Some(tag);
        }
        if let Some(tag) = last_confirmed {
            acks.push(Ack {
                tag,
                multiple: true,
            });
        }
        if let Some(end) = head_end {
            self.tags = self.tags.split_off(&(end + 1));
        }
        for (&tag, state) in &mut self.tags {
            if *state == State::Confirmed {
                acks.push(Ack {
                    tag,
                    multiple: false,
                });
                *state = State::Settled;
            }
        }
        acks
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tags.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

enum Event {
    Taken(u64),
    Confirmed(u64),
    Settled(u64),
    Flush(oneshot::Sender<()>),
}

/// Where the consume loop and the tasks report deliveries; cheap to clone.
#[derive(Clone)]
pub struct Acks {
    events: mpsc::UnboundedSender<Event>,
}

impl Acks {
    /// Starts the task that sends the acks on `channel` (the consuming channel). An ack
    /// that fails trips `broken`: the channel is gone, the session must reconnect.
    pub fn start(channel: Channel, broken: CancellationToken) -> Self {
        let (events, receiver) = mpsc::unbounded_channel();
        tokio::spawn(send_acks(channel, receiver, broken));
        Self { events }
    }

    /// Called by the consume loop for each delivery, before its task starts.
    pub fn taken(&self, tag: u64) {
        let _ = self.events.send(Event::Taken(tag));
    }

    /// The delivery's results are confirmed: ack it.
    pub fn confirmed(&self, tag: u64) {
        let _ = self.events.send(Event::Confirmed(tag));
    }

    /// The delivery's task nacked it itself (the nack already sent).
    pub fn settled(&self, tag: u64) {
        let _ = self.events.send(Event::Settled(tag));
    }

    /// Waits until every ack reported so far has been sent.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.events.send(Event::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn send_acks(
    channel: Channel,
    mut events: mpsc::UnboundedReceiver<Event>,
    broken: CancellationToken,
) {
    let mut book = AckBook::default();
    let mut flushed = Vec::new();
    while let Some(first) = events.recv().await {
        // Everything reported meanwhile goes into the same round of acks.
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                Event::Taken(tag) => book.taken(tag),
                Event::Confirmed(tag) => book.confirmed(tag),
                Event::Settled(tag) => book.settled(tag),
                Event::Flush(done) => flushed.push(done),
            }
            next = events.try_recv().ok();
        }
        for ack in book.take_acks() {
            let options = BasicAckOptions {
                multiple: ack.multiple,
            };
            if let Err(e) = channel.basic_ack(ack.tag, options).await {
                tracing::warn!(error = %e, "ack failed; the broker will redeliver the unacked messages");
                broken.cancel();
                break;
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(tag: u64, multiple: bool) -> Ack {
        Ack { tag, multiple }
    }

    #[test]
    fn a_run_of_confirmed_deliveries_is_one_multiple_ack() {
        let mut book = AckBook::default();
        for tag in 1..=5 {
            book.taken(tag);
        }
        for tag in [2, 1, 3] {
            book.confirmed(tag);
        }
        assert_eq!(book.take_acks(), vec![ack(3, true)]);
        assert_eq!(book.len(), 2);
        assert_eq!(book.take_acks(), vec![]);
    }

    #[test]
    fn done_behind_a_running_delivery_is_acked_alone_once() {
        let mut book = AckBook::default();
        for tag in 1..=4 {
            book.taken(tag);
        }
        book.confirmed(3);
        assert_eq!(book.take_acks(), vec![ack(3, false)]);
        book.confirmed(1);
        book.confirmed(2);
        // 3 was acked already: the multiple ack names 2, and 3 goes with the head.
        assert_eq!(book.take_acks(), vec![ack(2, true)]);
        assert_eq!(book.len(), 1);
        book.confirmed(4);
        assert_eq!(book.take_acks(), vec![ack(4, true)]);
        assert!(book.is_empty());
    }

    #[test]
    fn nacked_deliveries_are_never_named_and_never_overtaken_while_running() {
        let mut book = AckBook::default();
        for tag in 1..=3 {
            book.taken(tag);
        }
        book.confirmed(1);
        book.confirmed(3);
        // 2 is running (its task may still nack it): only 1 in the head, 3 alone.
        assert_eq!(book.take_acks(), vec![ack(1, true), ack(3, false)]);
        book.settled(2);
        // 2 was nacked by its task and 3 is acked: nothing left to send.
        assert_eq!(book.take_acks(), vec![]);
        assert!(book.is_empty());
        book.taken(4);
        book.taken(5);
        book.settled(5);
        book.confirmed(4);
        assert_eq!(book.take_acks(), vec![ack(4, true)]);
        assert!(book.is_empty());
    }

    #[test]
    fn every_confirmed_delivery_is_acked_exactly_once() {
        // Any completion order: each confirmed tag is covered by exactly one ack, no
        // ack names a settled tag, and a multiple ack never covers a running one.
        let orders: [&[u64]; 4] = [
            &[1, 2, 3, 4, 5, 6],
            &[6, 5, 4, 3, 2, 1],
            &[2, 4, 6, 1, 3, 5],
            &[3, 1, 2, 6, 4, 5],
        ];
        for order in orders {
            let mut book = AckBook::default();
            let mut running: Vec<u64> = (1..=6).collect();
            for tag in 1..=6 {
                book.taken(tag);
            }
            let mut acked = std::collections::BTreeSet::new();
            for &tag in order {
                running.retain(|t| *t != tag);
                if tag == 4 {
                    book.settled(tag);
                } else {
                    book.confirmed(tag);
                }
                for a in book.take_acks() {
                    assert_ne!(a.tag, 4, "{order:?}");
                    if a.multiple {
                        assert!(running.iter().all(|r| *r > a.tag), "{order:?}");
                        for t in 1..=a.tag {
                            if t != 4 {
                                acked.insert(t);
                            }
                        }
                    } else {
                        assert!(acked.insert(a.tag), "acked twice: {order:?}");
                    }
                }
            }
            assert_eq!(acked, [1, 2, 3, 5, 6].into_iter().collect(), "{order:?}");
            assert!(book.is_empty());
        }
    }
}
