//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES and TOTALS: the statistics of `stats.rs` in
//! PgBouncer's shapes (totals since start, averages over the last `stats_period`).

use super::Table;
use crate::app::App;
use crate::stats::{Counters, Stat};

/// SHOW STATS: per database, every total then every average.
pub(crate) fn stats(app: &App) -> Table {
    let mut columns = vec![("database", false)];
    columns.extend(Stat::ALL.iter().map(|s| (s.total_name(), true)));
    columns.extend(Stat::ALL.iter().map(|s| (s.avg_name(), true)));
    let rows = app
        .database_totals()
        .into_iter()
        .map(|(db, totals)| {
            let averages = app.stats_periods.averages(&db);
            let mut row = vec![db];
            row.extend(values(&totals));
            row.extend(values(&averages));
            row
        })
        .collect();
    Table { columns, rows }
}

/// SHOW STATS_TOTALS (`averages: false`) or SHOW STATS_AVERAGES: per database, one kind.
pub(crate) fn one_kind(app: &App, averages: bool) -> Table {
    let mut columns = vec![("database", false)];
    columns.extend(Stat::ALL.iter().map(|s| (s.name(), true)));
    let rows = app
        .database_totals()
        .into_iter()
        .map(|(db, totals)| {
            let shown = if averages {
                app.stats_periods.averages(&db)
            } else {
                totals
            };
            let mut row = vec![db];
            row.extend(values(&shown));
            row
        })
        .collect();
    Table { columns, rows }
}

/// SHOW TOTALS: SHOW STATS summed over all databases, as name/value rows.
pub(crate) fn totals(app: &App) -> Table {
    let mut totals = Counters::default();
    let mut averages = Counters::default();
    for (db, t) in app.database_totals() {
        totals.add(&t);
        averages.add(&app.stats_periods.averages(&db));
    }
    let mut rows: Vec<Vec<String>> = Stat::ALL
        .iter()
        .map(|&s| vec![s.total_name().to_owned(), totals.get(s).to_string()])
        .collect();
    rows.extend(
        Stat::ALL
            .iter()
            .map(|&s| vec![s.avg_name().to_owned(), averages.get(s).to_string()]),
    );
    Table {
        columns: vec![("name", false), ("value", true)],
        rows,
    }
}

fn values(c: &Counters) -> impl Iterator<Item = String> + '_ {
    Stat::ALL.iter().map(|&s| c.get(s).to_string())
}
