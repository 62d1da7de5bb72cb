//! Search on PostgreSQL: a GIN index that cannot order what it finds.
//!
//! The index holds each message's words and, for each of its two users, a
//! lexeme of the user alone (`~<row>`) and one of the user and the
//! message's id bucket (`~<row>/<id / 65536>`; the schema's
//! `dyad_search_terms`). Fetching and sorting every hit of a common word
//! for a busy user cost tens of milliseconds, so a search asks only as many
//! of the newest buckets as should fill the page, judged from how common
//! the words and the user are; then four times as many older ones each
//! round; and the rest by the user's own lexeme, which is also the first
//! and only round when the words are rare.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dyad_protocol::UserId;
use dyad_protocol::domain::SearchText;
use sqlx::postgres::PgRow;

use super::{PostgresStore, message_columns, messages};
use crate::{StoreResult, backend};

/// Message ids per bucket, as a shift.
const BUCKET_BITS: u32 = 16;
/// Most bucket lexemes or-ed in one query; past this, the user's own.
const MAX_SPAN: i64 = 64;
/// How long the statistics are used before they are read again.
const STATS_FOR: Duration = Duration::from_secs(600);

/// The share of rows holding each of the most common terms, as
/// PostgreSQL's `ANALYZE` last counted them; read at most every
/// `STATS_FOR` (its length is bounded by the statistics target).
#[derive(Default)]
pub(super) struct TermStats(Mutex<Option<(Instant, Arc<Shares>)>>);

#[derive(Default)]
struct Shares {
    common: HashMap<String, f64>,
    /// A term not listed is rarer than every listed one.
    rarest: f64,
}

impl Shares {
    fn of(&self, term: &str) -> f64 {
        self.common.get(term).copied().unwrap_or(self.rarest)
    }
}

/// How many of the newest buckets the first round asks: enough for `want`
/// twice over, if the user's messages hold the rarest word at its share of
/// all messages.
fn first_span(want: i64, word_share: f64, user_share: f64) -> i64 {
    let per_bucket = (1u64 << BUCKET_BITS) as f64 * word_share * user_share;
    if per_bucket <= 0.0 {
        return i64::MAX;
    }
    (2.0 * want as f64 / per_bucket).ceil().clamp(1.0, i64::MAX as f64) as i64
}

impl PostgresStore {
    /// Up to `want` of `user`'s messages holding every word of `text`,
    /// older than `before`, newest first.
    pub(super) async fn search_rows(
        &self,
        user: UserId,
        text: &SearchText,
        before: Option<i64>,
        want: i64,
    ) -> StoreResult<Vec<PgRow>> {
        let row = self.ids.user_row(user);
        let shares = self.term_shares().await?;
        // The user's expected hits per bucket, if words and user are
        // independent; the first round spans enough buckets for two pages.
        let words = text.words().iter().map(|w| shares.of(&w.to_lowercase()));
        let mut span = first_span(want, words.fold(1.0, f64::min), shares.of(&format!("~{row}")));
        // The id handed out last marks the newest bucket: anything stored
        // later is newer than the search.
        let newest: i64 = sqlx::query_scalar("SELECT last_value FROM message_ids")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        let mut rows = Vec::new();
        let mut top = newest >> BUCKET_BITS;
        while top >= 0 {
            let missing = want - i64::try_from(rows.len()).unwrap_or(want);
            if missing <= 0 {
                break;
            }
            let (first, users) = if span > MAX_SPAN {
                (0, format!("'~{row}'"))
            } else {
                let first = (top - span.max(1) + 1).max(0);
                let buckets: Vec<String> = (first..=top).map(|b| format!("'~{row}/{b}'")).collect();
                (first, buckets.join(" | "))
            };
            let range = (first << BUCKET_BITS, (top + 1) << BUCKET_BITS);
            rows.extend(self.search_range(text, &users, range, before, missing).await?);
            (top, span) = (first - 1, span.max(1).saturating_mul(4));
        }
        Ok(rows)
    }

    /// Up to `n` of the searcher's messages holding every word of `text`,
    /// newest first, with ids in `[from, to)` and `users` naming the
    /// searcher's lexemes to match (a tsquery: one, or several or-ed).
    async fn search_range(
        &self,
        text: &SearchText,
        users: &str,
        (from, to): (i64, i64),
        before: Option<i64>,
        n: i64,
    ) -> StoreResult<Vec<PgRow>> {
        sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            ", CASE WHEN m.recipient_id = c.user_lo THEN m.seq <= c.lo_read_seq ELSE m.seq <= c.hi_read_seq END
                AND (SELECT bool_and(read_receipts) FROM users WHERE id IN (c.user_lo, c.user_hi))",
            messages!(),
            // `m.id + 0`: the id range filters what the words found; as
            // `m.id` the planner also scans the primary key over the range.
            "JOIN conversations c ON c.id = m.conversation_id
             WHERE dyad_search_terms(m.id, m.body, m.sender_id, m.recipient_id)
                   @@ (plainto_tsquery('simple', $1) && $2::tsquery)
               AND m.id + 0 >= $3 AND m.id + 0 < $4 AND m.ts < $5 AND m.deleted_at IS NULL
             ORDER BY m.id DESC
             LIMIT $6"
        ))
        .bind(text.words().join(" "))
        .bind(users)
        .bind(from)
        .bind(to)
        .bind(before.unwrap_or(i64::MAX))
        .bind(n)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)
    }

    /// The term shares, read again when `STATS_FOR` has passed. With no
    /// statistics yet (a new database) every term counts as rare, which is
    /// right while the tables are small.
    async fn term_shares(&self) -> StoreResult<Arc<Shares>> {
        if let Ok(cached) = self.terms.0.lock()
            && let Some((at, shares)) = cached.as_ref()
            && at.elapsed() < STATS_FOR
        {
            return Ok(shares.clone());
        }
        let listed: Vec<(String, f32)> = sqlx::query_as(
            // The frequencies array ends with three summary numbers that
            // pair with no element.
            "SELECT e, f FROM pg_stats s,
                    unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS u(e, f)
             WHERE s.schemaname = current_schema() AND s.tablename = 'messages_search' AND e IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let rarest = listed.iter().map(|(_, f)| f64::from(*f)).fold(f64::INFINITY, f64::min);
        let shares = Arc::new(Shares {
            rarest: if rarest.is_finite() { rarest } else { 0.0 },
            common: listed.into_iter().map(|(e, f)| (e, f64::from(f))).collect(),
        });
        if let Ok(mut cached) = self.terms.0.lock() {
            *cached = Some((Instant::now(), shares.clone()));
        }
        Ok(shares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_round_spans_more_buckets_the_rarer_the_hits() {
        // A word in 44% of messages, a user in 0.2% of them: 57 hits a
        // bucket, so one or two buckets fill a page of 51.
        assert_eq!(first_span(51, 0.44, 0.002), 2);
        assert_eq!(first_span(51, 1.0, 1.0), 1);
        // 2% and 0.2%: 2.6 a bucket, 39 buckets.
        assert_eq!(first_span(51, 0.02, 0.002), 39);
        // Rare words, or no statistics: past MAX_SPAN, the user's own lexeme.
        assert!(first_span(51, 0.001, 0.002) > MAX_SPAN);
        assert_eq!(first_span(51, 0.0, 0.002), i64::MAX);
    }
}
