//! The ids a store shows are not its row numbers.
//!
//! Rows are numbered by counters: small integers keep every row and index
//! entry short, and that is measurable at full load (docs/BENCHMARKS.md).
//! Counters on the wire, though, would let anyone walk every account. So a
//! store shows each row number through a keyed permutation of `0..2^62`: a
//! balanced Feistel network of two 31-bit halves whose round function is
//! SipHash-1-3 under a 128-bit key kept in the database, with bit 62 set.
//! Without the key, one id says nothing about any other; with it, turning
//! an id back into its row is a few hashes and no lookup.
//!
//! Ids are identities that clients keep, so they never change: rows made
//! before a database had its key (up to its *legacy bound*, recorded when
//! the key was made) keep showing their number. Those are below 2^62 and
//! the others at or above it, so the two never meet.

use std::hash::Hasher;

use dyad_protocol::{MessageId, SessionId, UserId};
use siphasher::sip::SipHasher13;

/// What an id names. Each kind is its own permutation, so a user and a
/// message with the same row number do not share an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKind {
    User = 1,
    Message = 2,
    Session = 3,
}

const HALF_BITS: u32 = 31;
const HALF_MASK: u64 = (1 << HALF_BITS) - 1;
/// Set in every permuted id, never in a legacy one.
const PERMUTED: i64 = 1 << 62;
/// Luby and Rackoff: four rounds of a pseudo-random function make a strong
/// pseudo-random permutation; two more leave a margin.
const ROUNDS: u64 = 6;
/// The row number a shown id that no row can have turns into: rows are
/// numbered from 1.
pub(crate) const NO_ROW: i64 = -1;

/// A database's permutation: its key, and the rows that keep their numbers.
#[derive(Clone, Copy)]
pub(crate) struct IdCipher {
    k0: u64,
    k1: u64,
    legacy_users: i64,
    legacy_messages: i64,
}

impl std::fmt::Debug for IdCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdCipher")
            .field("legacy_users", &self.legacy_users)
            .field("legacy_messages", &self.legacy_messages)
            .finish_non_exhaustive()
    }
}

impl IdCipher {
    /// The length of a key, in bytes.
    pub(crate) const KEY_LEN: usize = 16;

    /// A cipher from a stored key (`None` if it is not [`Self::KEY_LEN`]
    /// bytes) and the legacy bounds of users and messages.
    pub(crate) fn new(key: &[u8], legacy_users: i64, legacy_messages: i64) -> Option<Self> {
        let key: [u8; Self::KEY_LEN] = key.try_into().ok()?;
        let (k0, k1) = key.split_at(8);
        Some(IdCipher {
            k0: u64::from_le_bytes(k0.try_into().ok()?),
            k1: u64::from_le_bytes(k1.try_into().ok()?),
            legacy_users,
            legacy_messages,
        })
    }

    /// A fresh random key, to store with a new database.
    pub(crate) fn new_key() -> Result<[u8; Self::KEY_LEN], getrandom::Error> {
        let mut key = [0; Self::KEY_LEN];
        getrandom::fill(&mut key)?;
        Ok(key)
    }

    fn legacy(&self, kind: IdKind) -> i64 {
        match kind {
            IdKind::User => self.legacy_users,
            IdKind::Message => self.legacy_messages,
            // Session ids were never shown before they were permuted.
            IdKind::Session => -1,
        }
    }

    fn round(&self, kind: IdKind, round: u64, half: u64) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u64((kind as u64) << 40 | round << 32 | half);
        h.finish() & HALF_MASK
    }

    /// The id shown for row number `row` (`0 <= row < 2^62`).
    pub(crate) fn show(&self, kind: IdKind, row: i64) -> i64 {
        if row <= self.legacy(kind) {
            return row;
        }
        let row = row as u64;
        let (mut left, mut right) = (row >> HALF_BITS & HALF_MASK, row & HALF_MASK);
        for round in 0..ROUNDS {
            (left, right) = (right, left ^ self.round(kind, round, right));
        }
        PERMUTED | (left << HALF_BITS | right) as i64
    }

    /// The row number behind a shown id, or [`NO_ROW`] for a value that
    /// [`IdCipher::show`] never returns.
    pub(crate) fn row(&self, kind: IdKind, id: i64) -> i64 {
        if (0..=self.legacy(kind)).contains(&id) {
            return id;
        }
        if id < PERMUTED {
            return NO_ROW;
        }
        let id = (id ^ PERMUTED) as u64;
        let (mut left, mut right) = (id >> HALF_BITS, id & HALF_MASK);
        for round in (0..ROUNDS).rev() {
            (left, right) = (right ^ self.round(kind, round, left), left);
        }
        let row = (left << HALF_BITS | right) as i64;
        if row > self.legacy(kind) { row } else { NO_ROW }
    }

    /// The user with row number `row`.
    pub(crate) fn user(&self, row: i64) -> UserId {
        UserId(self.show(IdKind::User, row))
    }

    /// The row number of user `id` ([`NO_ROW`] if no row can have it).
    pub(crate) fn user_row(&self, id: UserId) -> i64 {
        self.row(IdKind::User, id.get())
    }

    /// The message with row number `row`.
    pub(crate) fn message(&self, row: i64) -> MessageId {
        MessageId(self.show(IdKind::Message, row))
    }

    /// The row number of message `id` ([`NO_ROW`] if no row can have it).
    pub(crate) fn message_row(&self, id: MessageId) -> i64 {
        self.row(IdKind::Message, id.get())
    }

    /// The session with row number `row`.
    pub(crate) fn session(&self, row: i64) -> SessionId {
        SessionId(self.show(IdKind::Session, row))
    }

    /// The row number of session `id` ([`NO_ROW`] if no row can have it).
    pub(crate) fn session_row(&self, id: SessionId) -> i64 {
        self.row(IdKind::Session, id.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(seed: u8) -> IdCipher {
        legacy_cipher(seed, 0)
    }

    fn legacy_cipher(seed: u8, legacy: i64) -> IdCipher {
        IdCipher::new(&[seed; IdCipher::KEY_LEN], legacy, legacy).unwrap_or_else(|| panic!("a 16-byte key"))
    }

    #[test]
    fn every_row_comes_back_from_its_id() {
        let c = cipher(7);
        for row in (1..5_000).chain([(1 << 31) - 1, 1 << 31, (1 << 62) - 1]) {
            let id = c.show(IdKind::User, row);
            assert!(id >= PERMUTED, "{id} is outside the permuted half");
            assert_eq!(c.row(IdKind::User, id), row);
        }
    }

    #[test]
    fn neighbouring_rows_get_unrelated_ids() {
        let c = cipher(1);
        let ids: Vec<i64> = (1..=1_000).map(|row| c.show(IdKind::User, row)).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "a permutation has no collisions");
        // Counters would be 1..=1000: these spread over 2^62.
        let close = ids.windows(2).filter(|w| w[1].abs_diff(w[0]) < 1 << 40).count();
        assert!(close < 5, "{close} of 1,000 neighbours are close");
    }

    #[test]
    fn another_key_gives_other_ids() {
        let (a, b) = (cipher(1), cipher(2));
        let same = (1..=1_000)
            .filter(|&row| a.show(IdKind::User, row) == b.show(IdKind::User, row))
            .count();
        assert_eq!(same, 0);
    }

    #[test]
    fn a_user_and_a_message_with_one_row_number_get_different_ids() {
        let c = cipher(4);
        let same = (1..=1_000)
            .filter(|&row| c.user(row).get() == c.message(row).get())
            .count();
        assert_eq!(same, 0);
        assert_eq!(c.message_row(c.message(42)), 42);
    }

    #[test]
    fn rows_made_before_the_key_keep_their_numbers_and_later_ones_do_not() {
        let c = legacy_cipher(5, 100);
        for row in 1..=100 {
            assert_eq!(c.show(IdKind::User, row), row);
            assert_eq!(c.row(IdKind::User, row), row);
        }
        for row in 101..2_000 {
            let id = c.show(IdKind::Message, row);
            assert!(id >= PERMUTED);
            assert_eq!(c.row(IdKind::Message, id), row);
        }
        // A small id past the bound names nothing, nor does a permuted id
        // whose row is a legacy one.
        assert_eq!(c.row(IdKind::User, 101), NO_ROW);
        let of_legacy_row = cipher(5).show(IdKind::User, 50);
        assert_eq!(c.row(IdKind::User, of_legacy_row), NO_ROW);
    }

    #[test]
    fn values_no_row_can_have_name_none() {
        let c = cipher(3);
        for id in [-1, i64::MIN, 5, PERMUTED - 1] {
            assert_eq!(c.row(IdKind::User, id), NO_ROW, "{id}");
        }
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        assert!(IdCipher::new(&[0; 15], 0, 0).is_none());
        assert!(IdCipher::new(&[0; 17], 0, 0).is_none());
        assert!(IdCipher::new_key().is_ok());
    }
}
