//! Multi-row INSERTs: one statement for up to [`ROWS_PER_STATEMENT`] rows spares SQLite most of
//! the per-statement work of inserting a row at a time. Used by the ledger and, so that the
//! comparison is fair, by the plain-INSERT baseline.

use rusqlite::{Connection, Statement};

/// Rows bound into one INSERT statement.
pub(crate) const ROWS_PER_STATEMENT: usize = 64;

/// Inserts `rows` with `head` (`INSERT INTO table (a, b)`) and `columns` values per row;
/// `bind` binds one row's values from parameter index `first` (1-based) on.
pub(crate) fn insert_rows<R>(conn: &Connection, head: &str, columns: usize, rows: &[R], mut bind: impl FnMut(&mut Statement<'_>, usize, &R) -> rusqlite::Result<()>) -> rusqlite::Result<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut statement = conn.prepare_cached(&statement_sql(head, columns, chunk.len()))?;
        for (position, row) in chunk.iter().enumerate() {
            bind(&mut statement, position * columns + 1, row)?;
        }
        statement.raw_execute()?;
    }
    Ok(())
}

fn statement_sql(head: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!("{head} VALUES {}", vec![row.as_str(); rows].join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_every_row_in_chunks() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER, b TEXT)").unwrap();
        let rows: Vec<(i64, String)> = (0..150).map(|n| (n, format!("row {n}"))).collect();
        insert_rows(&conn, "INSERT INTO t (a, b)", 2, &rows, |statement, first, (a, b)| {
            statement.raw_bind_parameter(first, a)?;
            statement.raw_bind_parameter(first + 1, b)
        })
        .unwrap();
        let (count, sum): (i64, i64) = conn.query_row("SELECT count(*), sum(a) FROM t", [], |row| Ok((row.get(0)?, row.get(1)?))).unwrap();
        assert_eq!((count, sum), (150, (0..150).sum()));
        assert_eq!(statement_sql("INSERT INTO t (a)", 1, 2), "INSERT INTO t (a) VALUES (?), (?)");
    }
}
