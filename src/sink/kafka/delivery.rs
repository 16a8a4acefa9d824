//! Ordered delivery for the Kafka sink: what happens between `producer.send` and the ack.
//!
//! Every record gets a sequence number as it is produced. librdkafka keeps per-partition order
//! for what it delivers, but a record it gives up on (the topic deleted for longer than
//! `topic.metadata.propagation.max.ms`, a non-retriable broker error) comes back to us, and
//! producing it again naively would put it after later records of the same key. So a failed
//! delivery starts a *recovery episode*:
//!
//! 1. the gate closes: `send` produces nothing new until the episode ends;
//! 2. the re-sender waits until every record produced before is settled (delivered or failed:
//!    nothing is outstanding), then produces all failed records again **in sequence order**;
//! 3. if some fail again, it waits for the round to settle, backs off and does it again;
//! 4. when a round is delivered completely, the gate opens.
//!
//! A record delivered while an earlier record of the same key waits to be re-sent (librdkafka
//! accepted it in the instant between giving up on the earlier one and reporting it) is
//! re-sent too, after it: the key's last record is then its newest again.
//!
//! Also here: the per-topic stall watch that turns "records wait and nothing is delivered"
//! into a clear error when the topic turns out to be missing (librdkafka itself says nothing
//! for the first 30 s after a topic is deleted).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::oneshot;

use super::Out;
use crate::sink::SinkError;

/// Resolves an ack: `Ok` once the broker has the record.
pub type Done = oneshot::Sender<Result<(), SinkError>>;

/// The delivery opaque of every record: its sequence number and its ack.
pub struct Token {
    pub seq: u64,
    pub done: Done,
}

/// A record librdkafka gave back (or one to re-send after one that was).
pub struct Failed {
    pub out: Out,
    pub error: Option<KafkaError>,
    pub done: Done,
}

/// Records in flight towards one topic: for the stall watch.
struct Flight {
    outstanding: u64,
    /// The last delivery, or when the topic last went from idle to busy.
    progress: Instant,
}

/// What the episode has done, for its closing log line.
struct Episode {
    since: Instant,
    resent: u64,
    rounds: u32,
}

/// The ordering state, behind the producer context's mutex.
#[derive(Default)]
pub struct State {
    next_seq: u64,
    /// Produced records without a delivery report yet.
    outstanding: u64,
    /// Records to produce again, by sequence number.
    failed: BTreeMap<u64, Failed>,
    /// (topic, key) of every record in `failed`.
    failed_keys: HashSet<(String, Vec<u8>)>,
    episode: Option<Episode>,
    /// A re-send round is producing (its records are not all in `outstanding` yet).
    resending: bool,
    flights: HashMap<String, Flight>,
}

/// What a state change asks of the caller (outside the lock).
#[derive(Debug, PartialEq)]
pub enum Next {
    Nothing,
    /// Wake the re-sender: everything earlier is settled.
    Resend,
    /// The episode is over: open the gate.
    Open {
        resent: u64,
        rounds: u32,
        secs: f64,
    },
}

impl State {
    /// Whether new records must wait.
    pub fn gate_closed(&self) -> bool {
        self.episode.is_some()
    }

    /// The number the next produced record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// `seq` was handed to librdkafka for `topic`.
    pub fn produced(&mut self, seq: u64, topic: &str) {
        self.next_seq = self.next_seq.max(seq + 1);
        self.outstanding += 1;
        match self.flights.get_mut(topic) {
            Some(f) => {
                if f.outstanding == 0 {
                    f.progress = Instant::now();
                }
                f.outstanding += 1;
            }
            None => {
                self.flights.insert(
                    topic.to_owned(),
                    Flight {
                        outstanding: 1,
                        progress: Instant::now(),
                    },
                );
            }
        }
    }

    /// A delivery report for `topic`/`key` (`error`: librdkafka gave the record back).
    /// Returns the ack to resolve (none while the record must be re-sent), whether this
    /// report started an episode, and what to do next. `message` is called only when the
    /// record is kept for a re-send.
    pub fn report(
        &mut self,
        token: Token,
        topic: &str,
        key: &[u8],
        error: Option<&KafkaError>,
        message: impl FnOnce() -> Out,
    ) -> (Option<Done>, bool, Next) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Some(f) = self.flights.get_mut(topic) {
            f.outstanding = f.outstanding.saturating_sub(1);
            if error.is_none() {
                f.progress = Instant::now();
            }
        }
        let mut started = false;
        let done = match error {
            None if !self.waits_behind_failure(topic, key) => Some(token.done),
            None => {
                self.push_failed(token, message(), None);
                None
            }
            Some(e) => {
                if self.episode.is_none() {
                    started = true;
                    self.episode = Some(Episode {
                        since: Instant::now(),
                        resent: 0,
                        rounds: 0,
                    });
                }
                self.push_failed(token, message(), Some(e.clone()));
                None
            }
        };
        (done, started, self.next())
    }

    fn waits_behind_failure(&self, topic: &str, key: &[u8]) -> bool {
        !self.failed_keys.is_empty() && self.failed_keys.contains(&(topic.to_owned(), key.to_vec()))
    }

    fn push_failed(&mut self, token: Token, out: Out, error: Option<KafkaError>) {
        self.failed_keys
            .insert((out.topic.clone(), out.key.as_bytes().to_vec()));
        self.failed.insert(
            token.seq,
            Failed {
                out,
                error,
                done: token.done,
            },
        );
    }

    /// The re-sender takes the next round: every failed record, in sequence order, and the
    /// round's number in the episode (from 1). `None` unless everything produced earlier is
    /// settled.
    pub fn take_round(&mut self) -> Option<(Vec<(u64, Failed)>, u32)> {
        if self.episode.is_none()
            || self.resending
            || self.outstanding > 0
            || self.failed.is_empty()
        {
            return None;
        }
        self.resending = true;
        self.failed_keys.clear();
        let round: Vec<_> = std::mem::take(&mut self.failed).into_iter().collect();
        let e = self.episode.as_mut().expect("episode checked above");
        e.rounds += 1;
        e.resent += round.len() as u64;
        Some((round, e.rounds))
    }

    /// The re-sender could not produce these (refused by librdkafka): back to `failed`.
    pub fn give_back(&mut self, rest: impl IntoIterator<Item = (u64, Failed)>) {
        for (seq, f) in rest {
            if let Some(e) = &mut self.episode {
                e.resent -= 1;
            }
            self.failed_keys
                .insert((f.out.topic.clone(), f.out.key.as_bytes().to_vec()));
            self.failed.insert(seq, f);
        }
    }

    /// The re-sender finished producing its round.
    pub fn round_produced(&mut self) -> Next {
        self.resending = false;
        self.next()
    }

    fn next(&mut self) -> Next {
        if self.episode.is_none() || self.resending || self.outstanding > 0 {
            return Next::Nothing;
        }
        if !self.failed.is_empty() {
            return Next::Resend;
        }
        let e = self.episode.take().expect("episode checked above");
        Next::Open {
            resent: e.resent,
            rounds: e.rounds,
            secs: e.since.elapsed().as_secs_f64(),
        }
    }

    /// Topics with records outstanding and no delivery for `stall`.
    pub fn stalled(&self, stall: Duration) -> Vec<(String, u64)> {
        self.flights
            .iter()
            .filter(|(_, f)| f.outstanding > 0 && f.progress.elapsed() >= stall)
            .map(|(t, f)| (t.clone(), f.outstanding))
            .collect()
    }

    /// Whether `topic` has records outstanding.
    pub fn busy(&self, topic: &str) -> bool {
        self.flights.get(topic).is_some_and(|f| f.outstanding > 0)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn out(key: &str, version: u32) -> Out {
        Out {
            topic: "t".into(),
            key: key.into(),
            payload: Some(version.to_string().into_bytes()),
            headers: None,
            deleted: false,
        }
    }

    /// Produces a record; returns its sequence number and its ack.
    fn produce(
        st: &mut State,
        key: &str,
        version: u32,
    ) -> (Token, Out, oneshot::Receiver<Result<(), SinkError>>) {
        assert!(!st.gate_closed(), "new records pass only an open gate");
        let (done, rx) = oneshot::channel();
        let seq = st.next_seq();
        st.produced(seq, "t");
        (Token { seq, done }, out(key, version), rx)
    }

    fn gone() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition)
    }

    fn fail(st: &mut State, t: Token, o: Out) -> (bool, Next) {
        let (done, started, next) =
            st.report(t, "t", &o.key.clone().into_bytes(), Some(&gone()), || o);
        assert!(done.is_none(), "a failed record is not acknowledged");
        (started, next)
    }

    fn deliver(st: &mut State, t: Token, o: Out) -> (Option<Done>, Next) {
        let (done, started, next) = st.report(t, "t", &o.key.clone().into_bytes(), None, || o);
        assert!(!started);
        (done, next)
    }

    fn versions(round: &[(u64, Failed)]) -> Vec<String> {
        round
            .iter()
            .map(|(_, f)| String::from_utf8(f.out.payload.clone().unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn failed_records_are_resent_in_produce_order_after_everything_earlier_settles() {
        let mut st = State::default();
        let (t1, o1, _r1) = produce(&mut st, "a", 1);
        let (t2, o2, _r2) = produce(&mut st, "b", 2);
        let (t3, o3, mut r3) = produce(&mut st, "c", 3);
        let (t4, o4, _r4) = produce(&mut st, "a", 4);

        // Reports arrive out of produce order (different partitions).
        let (started, next) = fail(&mut st, t2, o2);
        assert!(started && st.gate_closed());
        assert_eq!(next, Next::Nothing, "two records are still outstanding");
        assert!(st.take_round().is_none());
        let (_, next) = fail(&mut st, t4, o4);
        assert_eq!(next, Next::Nothing);
        let (done, next) = deliver(&mut st, t3, o3);
        done.unwrap().send(Ok(())).unwrap();
        assert!(r3.try_recv().unwrap().is_ok());
        assert_eq!(next, Next::Nothing);
        let (started, next) = fail(&mut st, t1, o1);
        assert!(!started, "one episode");
        assert_eq!(next, Next::Resend, "everything produced is settled");

        let (round, number) = st.take_round().unwrap();
        assert_eq!(number, 1);
        assert_eq!(versions(&round), ["1", "2", "4"], "sequence order");
        assert!(st.take_round().is_none(), "one round at a time");
        let mut again = Vec::new();
        for (seq, f) in round {
            st.produced(seq, "t");
            again.push((Token { seq, done: f.done }, f.out));
        }
        assert_eq!(st.round_produced(), Next::Nothing);
        assert!(st.gate_closed(), "closed until the round is delivered");
        let mut last = Next::Nothing;
        for (t, o) in again {
            let (done, next) = deliver(&mut st, t, o);
            assert!(done.is_some());
            last = next;
        }
        assert!(
            matches!(
                last,
                Next::Open {
                    resent: 3,
                    rounds: 1,
                    ..
                }
            ),
            "{last:?}"
        );
        assert!(!st.gate_closed());
        let (_, _, _) = produce(&mut st, "a", 5);
        assert_eq!(st.next_seq(), 5, "sequence numbers continue");
    }

    #[test]
    fn a_later_record_of_a_failed_key_delivered_meanwhile_is_resent_after_it() {
        let mut st = State::default();
        let (t1, o1, _r1) = produce(&mut st, "a", 1);
        let (t2, o2, mut r2) = produce(&mut st, "a", 2);
        fail(&mut st, t1, o1);
        let (done, next) = deliver(&mut st, t2, o2);
        assert!(
            done.is_none(),
            "held: its key has an earlier record to re-send"
        );
        assert_eq!(next, Next::Resend);
        assert!(r2.try_recv().is_err(), "not acknowledged yet");
        let (round, _) = st.take_round().unwrap();
        assert_eq!(
            versions(&round),
            ["1", "2"],
            "the key ends on its newest version"
        );
    }

    #[test]
    fn a_round_given_back_resumes_in_order_and_counts_rounds() {
        let mut st = State::default();
        let (t1, o1, _r1) = produce(&mut st, "a", 1);
        let (t2, o2, _r2) = produce(&mut st, "b", 2);
        fail(&mut st, t1, o1);
        assert_eq!(fail(&mut st, t2, o2).1, Next::Resend);
        let (round, _) = st.take_round().unwrap();
        let mut round = round.into_iter();
        let (seq1, f1) = round.next().unwrap();
        st.produced(seq1, "t");
        // librdkafka refuses the second: it goes back.
        st.give_back(round);
        assert_eq!(
            st.round_produced(),
            Next::Nothing,
            "the first is outstanding"
        );
        let (_, next) = fail(
            &mut st,
            Token {
                seq: seq1,
                done: f1.done,
            },
            f1.out,
        );
        assert_eq!(next, Next::Resend);
        let (round, number) = st.take_round().unwrap();
        assert_eq!(
            (versions(&round), number),
            (vec!["1".into(), "2".into()], 2)
        );
    }

    #[test]
    fn stalled_topics_are_those_with_records_and_no_delivery() {
        let mut st = State::default();
        assert!(st.stalled(Duration::ZERO).is_empty());
        let (t1, o1, _r1) = produce(&mut st, "a", 1);
        assert!(st.busy("t"));
        assert_eq!(st.stalled(Duration::ZERO), [("t".to_owned(), 1)]);
        assert!(st.stalled(Duration::from_secs(3600)).is_empty());
        deliver(&mut st, t1, o1);
        assert!(!st.busy("t"));
        assert!(st.stalled(Duration::ZERO).is_empty());
    }
}
