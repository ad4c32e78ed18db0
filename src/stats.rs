//! Statistics with PgBouncer's definitions: per-client counters written only by the client's
//! own task (plain loads and stores, no shared cache line per message), folded into their
//! pool's totals when the client leaves; per-database totals summed on demand; averages over
//! the last `stats_period`, computed by a periodic task that also writes the `log_stats` line.
//! Times are in microseconds, as in PgBouncer's SHOW STATS.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One statistic. The order is the order of SHOW STATS' `total_*` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stat {
    /// SQL transactions pooled (a statement outside a transaction block counts as one).
    XactCount,
    /// ReadyForQuery answers: Query messages and extended-protocol Syncs.
    QueryCount,
    /// Times a server connection was assigned to a client.
    ServerAssignmentCount,
    /// Bytes received from clients.
    Received,
    /// Bytes sent to clients.
    Sent,
    /// Microseconds spent in transactions, idle in transaction included.
    XactTime,
    /// Microseconds spent waiting for the server's answers.
    QueryTime,
    /// Microseconds clients spent waiting for a server connection.
    WaitTime,
    /// Parse messages received from clients.
    ClientParseCount,
    /// Parse messages sent to servers (pgberth's own, before a statement's first use, too).
    ServerParseCount,
    /// Bind messages relayed.
    BindCount,
    /// Clients that logged in.
    ClientLoginCount,
}

pub const STAT_COUNT: usize = 12;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT] = [
        Stat::XactCount,
        Stat::QueryCount,
        Stat::ServerAssignmentCount,
        Stat::Received,
        Stat::Sent,
        Stat::XactTime,
        Stat::QueryTime,
        Stat::WaitTime,
        Stat::ClientParseCount,
        Stat::ServerParseCount,
        Stat::BindCount,
        Stat::ClientLoginCount,
    ];

    /// The name PgBouncer's SHOW STATS_TOTALS and STATS_AVERAGES give it (SHOW STATS and
    /// TOTALS add `total_` and `avg_`, see [`Stat::avg_name`]).
    pub fn name(self) -> &'static str {
        match self {
            Stat::XactCount => "xact_count",
            Stat::QueryCount => "query_count",
            Stat::ServerAssignmentCount => "server_assignment_count",
            Stat::Received => "bytes_received",
            Stat::Sent => "bytes_sent",
            Stat::XactTime => "xact_time",
            Stat::QueryTime => "query_time",
            Stat::WaitTime => "wait_time",
            Stat::ClientParseCount => "client_parse_count",
            Stat::ServerParseCount => "server_parse_count",
            Stat::BindCount => "bind_count",
            Stat::ClientLoginCount => "client_login_count",
        }
    }

    /// The column name in SHOW STATS and TOTALS: `total_` and the name, except that bytes
    /// are `total_received` and `total_sent`.
    pub fn total_name(self) -> &'static str {
        match self {
            Stat::XactCount => "total_xact_count",
            Stat::QueryCount => "total_query_count",
            Stat::ServerAssignmentCount => "total_server_assignment_count",
            Stat::Received => "total_received",
            Stat::Sent => "total_sent",
            Stat::XactTime => "total_xact_time",
            Stat::QueryTime => "total_query_time",
            Stat::WaitTime => "total_wait_time",
            Stat::ClientParseCount => "total_client_parse_count",
            Stat::ServerParseCount => "total_server_parse_count",
            Stat::BindCount => "total_bind_count",
            Stat::ClientLoginCount => "total_client_login_count",
        }
    }

    /// The column name in SHOW STATS and TOTALS: `avg_` and the name, except that bytes are
    /// `avg_recv` and `avg_sent`.
    pub fn avg_name(self) -> &'static str {
        match self {
            Stat::XactCount => "avg_xact_count",
            Stat::QueryCount => "avg_query_count",
            Stat::ServerAssignmentCount => "avg_server_assignment_count",
            Stat::Received => "avg_recv",
            Stat::Sent => "avg_sent",
            Stat::XactTime => "avg_xact_time",
            Stat::QueryTime => "avg_query_time",
            Stat::WaitTime => "avg_wait_time",
            Stat::ClientParseCount => "avg_client_parse_count",
            Stat::ServerParseCount => "avg_server_parse_count",
            Stat::BindCount => "avg_bind_count",
            Stat::ClientLoginCount => "avg_client_login_count",
        }
    }

    /// Times are averaged per event (transaction, query, assignment); everything else is a
    /// rate per second.
    fn per_event(self) -> Option<Stat> {
        match self {
            Stat::XactTime => Some(Stat::XactCount),
            Stat::QueryTime => Some(Stat::QueryCount),
            Stat::WaitTime => Some(Stat::ServerAssignmentCount),
            _ => None,
        }
    }
}

/// A set of totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; STAT_COUNT]);

impl Counters {
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    pub fn add(&mut self, other: &Counters) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.wrapping_add(b);
        }
    }

    /// The averages over `elapsed` between `earlier` and `self`: rates per second, and times
    /// per transaction, query or assignment (PgBouncer's `avg_*`).
    pub fn averages_since(&self, earlier: &Counters, elapsed: Duration) -> Counters {
        let delta = |s: Stat| self.get(s).saturating_sub(earlier.get(s));
        let micros = elapsed.as_micros().max(1) as u64;
        let mut avg = Counters::default();
        for stat in Stat::ALL {
            avg.0[stat as usize] = match stat.per_event() {
                Some(count) => delta(stat).checked_div(delta(count)).unwrap_or(0),
                None => (u128::from(delta(stat)) * 1_000_000 / u128::from(micros)) as u64,
            };
        }
        avg
    }
}

/// Counters of one live client. Only the client's own task writes them (load, add, store:
/// no read-modify-write instruction, no contention); readers see a value at most one update
/// old.
#[derive(Debug, Default)]
pub struct LiveCounters([AtomicU64; STAT_COUNT]);

impl LiveCounters {
    /// Adds `n` to `stat`. Call only from the owning client's task.
    #[inline]
    pub fn bump(&self, stat: Stat, n: u64) {
        let cell = &self.0[stat as usize];
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> Counters {
        Counters(std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

static CLOCK_START: LazyLock<(Instant, SystemTime)> =
    LazyLock::new(|| (Instant::now(), SystemTime::now()));

/// Microseconds on a monotonic clock that starts with the process (never 0).
#[inline]
pub fn now_us() -> u64 {
    CLOCK_START.0.elapsed().as_micros() as u64 + 1
}

/// The coarse clock: a [`now_us`] reading refreshed by [`tick_coarse_clock`].
static COARSE_US: AtomicU64 = AtomicU64::new(0);

/// Refreshes the coarse clock; the upkeep calls it every quarter second.
pub fn tick_coarse_clock() {
    COARSE_US.store(now_us(), Ordering::Relaxed);
}

/// Now, to within the upkeep's quarter second and without reading the clock: for pool
/// bookkeeping whose limits are in seconds (idle time, lifetime, health-check delay), so that
/// a transaction's checkout and checkin read no clock.
pub fn coarse_now() -> Instant {
    CLOCK_START.0 + Duration::from_micros(COARSE_US.load(Ordering::Relaxed))
}

/// The instant [`now_us`] counts from.
pub fn clock_start() -> Instant {
    CLOCK_START.0
}

/// An `Instant` as a [`now_us`] reading (no clock read).
pub fn us_at(instant: Instant) -> u64 {
    instant.saturating_duration_since(CLOCK_START.0).as_micros() as u64 + 1
}

/// The wall-clock time of a [`now_us`] reading.
pub fn wall_time(us: u64) -> SystemTime {
    CLOCK_START.1 + Duration::from_micros(us.saturating_sub(1))
}

/// Unix seconds, for timestamps shown as text.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The averages of the last complete `stats_period`, by database.
#[derive(Debug, Default)]
pub struct Periods {
    inner: std::sync::Mutex<PeriodState>,
}

#[derive(Debug, Default)]
struct PeriodState {
    last: Option<(Instant, BTreeMap<String, Counters>)>,
    averages: BTreeMap<String, Counters>,
}

impl Periods {
    /// Ends a period: the averages between the previous call and `totals` replace the shown
    /// ones. Returns the new averages.
    pub fn roll(&self, totals: BTreeMap<String, Counters>) -> BTreeMap<String, Counters> {
        let now = Instant::now();
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut averages = BTreeMap::new();
        if let Some((at, last)) = &state.last {
            let elapsed = now.duration_since(*at);
            for (db, total) in &totals {
                let earlier = last.get(db).copied().unwrap_or_default();
                averages.insert(db.clone(), total.averages_since(&earlier, elapsed));
            }
        }
        state.averages.clone_from(&averages);
        state.last = Some((now, totals));
        averages
    }

    /// The averages of the last complete period (zero for a database without one).
    pub fn averages(&self, database: &str) -> Counters {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.averages.get(database).copied().unwrap_or_default()
    }
}

/// PgBouncer's `log_stats` line for one database.
pub fn log_line(avg: &Counters) -> String {
    format!(
        "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
        avg.get(Stat::XactCount),
        avg.get(Stat::QueryCount),
        avg.get(Stat::ClientParseCount),
        avg.get(Stat::ServerParseCount),
        avg.get(Stat::BindCount),
        avg.get(Stat::Received),
        avg.get(Stat::Sent),
        avg.get(Stat::XactTime),
        avg.get(Stat::QueryTime),
        avg.get(Stat::WaitTime),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(pairs: &[(Stat, u64)]) -> Counters {
        let mut c = Counters::default();
        for &(s, n) in pairs {
            c.0[s as usize] = n;
        }
        c
    }

    #[test]
    fn averages_are_rates_per_second_and_times_per_event() {
        let earlier = counters(&[(Stat::XactCount, 10), (Stat::XactTime, 1_000)]);
        let now = counters(&[
            (Stat::XactCount, 110),
            (Stat::XactTime, 51_000),
            (Stat::Received, 4_000),
            (Stat::WaitTime, 500),
        ]);
        let avg = now.averages_since(&earlier, Duration::from_secs(2));
        assert_eq!(avg.get(Stat::XactCount), 50, "100 transactions in 2 s");
        assert_eq!(
            avg.get(Stat::XactTime),
            500,
            "50,000 us over 100 transactions"
        );
        assert_eq!(avg.get(Stat::Received), 2_000);
        // Wait time with no assignment in the period: no average, not a division by zero.
        assert_eq!(avg.get(Stat::WaitTime), 0);
    }

    #[test]
    fn column_names_follow_pgbouncer() {
        let totals: Vec<&str> = Stat::ALL.iter().map(|s| s.total_name()).collect();
        assert_eq!(totals[3], "total_received");
        assert_eq!(totals[4], "total_sent");
        assert_eq!(totals[0], "total_xact_count");
        assert_eq!(Stat::Received.avg_name(), "avg_recv");
        assert_eq!(Stat::ClientLoginCount.avg_name(), "avg_client_login_count");
    }

    #[test]
    fn live_counters_add_up() {
        let live = LiveCounters::default();
        live.bump(Stat::QueryCount, 2);
        live.bump(Stat::QueryCount, 3);
        assert_eq!(live.snapshot().get(Stat::QueryCount), 5);
    }

    #[test]
    fn a_period_needs_two_rolls() {
        let periods = Periods::default();
        let first = periods.roll(BTreeMap::from([("db".into(), Counters::default())]));
        assert!(first.is_empty());
        let second = periods.roll(BTreeMap::from([(
            "db".into(),
            counters(&[(Stat::QueryCount, 7)]),
        )]));
        assert!(second["db"].get(Stat::QueryCount) > 0);
        assert_eq!(periods.averages("db"), second["db"]);
    }
}
