//! Carrying a WorldInterface database over.
//!
//! The WorldInterface flow engine's own SQLite store keeps the same data in
//! another layout: STRICT tables `outputs(flow_run_id TEXT, node_id TEXT,
//! value BLOB, written_at TEXT)` and `globals(key TEXT, value BLOB,
//! written_at TEXT)`, ids as hyphenated UUID text, values as
//! `serde_json::to_vec` bytes, times as RFC 3339 text, and no
//! `application_id` or `user_version`.
//!
//! Opening such a file for writing with
//! [`SqliteContextStore::open`](crate::SqliteContextStore::open) (or
//! [`migrate_file`], behind `contextstore migrate`) converts it in place, in
//! the same single transaction that creates this build's schema: ids become
//! 16-byte UUIDs, values are kept as the exact JSON text they were, times
//! become Unix milliseconds. Every row is checked first; a row that cannot
//! be carried over (an id that is not a UUID, a value that is not UTF-8
//! JSON, a time that is not RFC 3339) fails the whole conversion with an
//! error naming the row, and the file is left as it was. Once converted the
//! file is a contextstore database, and opening it again changes nothing.

use std::path::Path;
use std::str::FromStr;

use rusqlite::{Connection, OpenFlags, params};

use crate::error::ContextStoreError;
use crate::id::{FlowRunId, NodeId};
use crate::json::{JsonText, MAX_DEPTH};

/// What [`migrate_file`] (or a migrating open) did to a database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version found (0 for a new or a WorldInterface file).
    pub from_version: i64,
    /// The schema version the file has now.
    pub to_version: i64,
    /// What was carried over from a WorldInterface database, if the file was one.
    pub worldinterface: Option<Converted>,
}

/// How many rows a WorldInterface conversion carried over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Converted {
    /// Node outputs.
    pub outputs: u64,
    /// Globals.
    pub globals: u64,
}

/// The original tables: each column's name, declared type and primary-key
/// position (all are `NOT NULL`).
const OUTPUTS: &[(&str, &str, i64)] = &[
    ("flow_run_id", "TEXT", 1),
    ("node_id", "TEXT", 2),
    ("value", "BLOB", 0),
    ("written_at", "TEXT", 0),
];
const GLOBALS: &[(&str, &str, i64)] = &[
    ("key", "TEXT", 1),
    ("value", "BLOB", 0),
    ("written_at", "TEXT", 0),
];

/// The names the original tables are moved to while their rows are copied.
const OLD_OUTPUTS: &str = "worldinterface_outputs";
const OLD_GLOBALS: &str = "worldinterface_globals";

/// Opens the database file at `path` (which must exist) and brings it to
/// this build's schema, converting a WorldInterface database: what
/// `contextstore migrate` does. A contextstore file already up to date is
/// left alone.
pub fn migrate_file(path: impl AsRef<Path>) -> Result<MigrationReport, ContextStoreError> {
    let path = path.as_ref();
    let at = |e: ContextStoreError| match e {
        ContextStoreError::StorageError(msg) => {
            ContextStoreError::StorageError(format!("{}: {msg}", path.display()))
        }
        other => other,
    };
    if !path.exists() {
        return Err(at(ContextStoreError::StorageError(
            "no such database file".into(),
        )));
    }
    // A file that is not this build's to change is refused before anything
    // (not even a -wal or -shm beside it) is written.
    super::sqlite::check_before_opening(path).map_err(at)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| at(e.into()))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(|e| at(e.into()))?;
    super::schema::migrate_reporting(&mut conn).map_err(at)
}

/// Whether `conn` holds exactly the original WorldInterface tables and
/// nothing else (indexes SQLite made for the primary keys aside).
pub(crate) fn detect(conn: &Connection) -> Result<bool, ContextStoreError> {
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    names.sort();
    if names != ["globals", "outputs"] {
        return Ok(false);
    }
    Ok(has_layout(conn, "outputs", OUTPUTS)? && has_layout(conn, "globals", GLOBALS)?)
}

fn has_layout(
    conn: &Connection,
    table: &str,
    columns: &[(&str, &str, i64)],
) -> Result<bool, ContextStoreError> {
    let strict: i64 = conn.query_row(
        "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
        [table],
        |row| row.get(0),
    )?;
    let found: Vec<(String, String, bool, i64)> = conn
        .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([table], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let matches = found.len() == columns.len()
        && found
            .iter()
            .zip(columns)
            .all(|(f, c)| f.0 == c.0 && f.1.eq_ignore_ascii_case(c.1) && f.2 && f.3 == c.2);
    Ok(strict == 1 && matches)
}

/// Moves the original tables aside, so that the schema's migrations can
/// create this build's tables under the same names.
pub(crate) fn set_aside(conn: &Connection) -> Result<(), ContextStoreError> {
    conn.execute_batch(&format!(
        "ALTER TABLE outputs RENAME TO {OLD_OUTPUTS};
         ALTER TABLE globals RENAME TO {OLD_GLOBALS};"
    ))?;
    Ok(())
}

/// Copies every row of the tables [`set_aside`] moved into this build's
/// tables, converting ids, values and times, then drops the old tables.
/// Runs inside the caller's transaction: an error leaves it to roll back.
pub(crate) fn copy_over(conn: &Connection) -> Result<Converted, ContextStoreError> {
    let mut converted = Converted::default();
    {
        let mut insert = conn.prepare(
            "INSERT INTO outputs (flow_run_id, node_id, value, written_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut select = conn.prepare(&format!(
            "SELECT flow_run_id, node_id, value, written_at FROM {OLD_OUTPUTS} ORDER BY rowid"
        ))?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let (run, node): (String, String) = (row.get(0)?, row.get(1)?);
            let (value, written_at): (Vec<u8>, String) = (row.get(2)?, row.get(3)?);
            let refuse = |what: String| {
                ContextStoreError::StorageError(format!(
                    "cannot convert the WorldInterface database: outputs row \
                     (flow_run_id {}, node_id {}): {what}; nothing was changed",
                    shown(&run),
                    shown(&node)
                ))
            };
            let run_id = FlowRunId::from_str(&run).map_err(|e| refuse(e.to_string()))?;
            let node_id = NodeId::from_str(&node).map_err(|e| refuse(e.to_string()))?;
            let text = json_text(value).map_err(&refuse)?;
            let millis = unix_millis(&written_at).map_err(&refuse)?;
            insert
                .execute(params![
                    run_id.as_bytes(),
                    node_id.as_bytes(),
                    text.as_str(),
                    millis
                ])
                .map_err(|e| refuse(e.to_string()))?;
            converted.outputs += 1;
        }
    }
    {
        let mut insert =
            conn.prepare("INSERT INTO globals (key, value, written_at) VALUES (?1, ?2, ?3)")?;
        let mut select = conn.prepare(&format!(
            "SELECT key, value, written_at FROM {OLD_GLOBALS} ORDER BY rowid"
        ))?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            let (key, value, written_at): (String, Vec<u8>, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?);
            let refuse = |what: String| {
                ContextStoreError::StorageError(format!(
                    "cannot convert the WorldInterface database: globals row (key {}): {what}; \
                     nothing was changed",
                    shown(&key)
                ))
            };
            let text = json_text(value).map_err(&refuse)?;
            let millis = unix_millis(&written_at).map_err(&refuse)?;
            insert
                .execute(params![key, text.as_str(), millis])
                .map_err(|e| refuse(e.to_string()))?;
            converted.globals += 1;
        }
    }
    conn.execute_batch(&format!(
        "DROP TABLE {OLD_OUTPUTS}; DROP TABLE {OLD_GLOBALS};"
    ))?;
    Ok(converted)
}

/// A stored value's bytes as checked JSON text, unchanged.
fn json_text(bytes: Vec<u8>) -> Result<JsonText, String> {
    let text =
        String::from_utf8(bytes).map_err(|e| format!("value is not UTF-8 JSON text ({e})"))?;
    JsonText::parse(text, MAX_DEPTH).map_err(|e| format!("value is not valid JSON ({e})"))
}

/// An RFC 3339 time as Unix milliseconds.
fn unix_millis(text: &str) -> Result<i64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("written_at {} is not an RFC 3339 time ({e})", shown(text)))?;
    i64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| format!("written_at {} is out of range", shown(text)))
}

/// A text from the file, quoted and cut to 64 characters for an error message.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_become_unix_milliseconds() {
        assert_eq!(unix_millis("1970-01-01T00:00:01.5+00:00"), Ok(1_500));
        assert_eq!(
            unix_millis("2024-05-01T12:34:56.123456789+00:00"),
            Ok(1_714_566_896_123)
        );
        assert_eq!(
            unix_millis("2024-05-01T14:34:56.123Z"),
            Ok(1_714_574_096_123)
        );
        assert_eq!(unix_millis("1969-12-31T23:59:59.9995Z"), Ok(-1));
        assert!(unix_millis("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn values_are_kept_as_text_and_checked() {
        assert_eq!(
            json_text(br#"{"a":[1,2.50]}"#.to_vec()).unwrap().as_str(),
            r#"{"a":[1,2.50]}"#
        );
        assert!(json_text(vec![0xff, 0xfe]).unwrap_err().contains("UTF-8"));
        assert!(
            json_text(b"{".to_vec())
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn long_texts_are_cut_in_messages() {
        assert_eq!(shown("ab"), "\"ab\"");
        assert!(shown(&"x".repeat(100)).ends_with('…'));
    }

    mod files {
        use super::super::*;
        use crate::{ContextStore, SqliteContextStore};
        use serde_json::json;

        /// The original store's schema, as it creates it.
        const ORIGINAL: &str = "
            PRAGMA journal_mode = WAL;
            CREATE TABLE IF NOT EXISTS outputs (
                flow_run_id TEXT NOT NULL,
                node_id     TEXT NOT NULL,
                value       BLOB NOT NULL,
                written_at  TEXT NOT NULL,
                PRIMARY KEY (flow_run_id, node_id)
            ) STRICT;
            CREATE TABLE IF NOT EXISTS globals (
                key        TEXT NOT NULL PRIMARY KEY,
                value      BLOB NOT NULL,
                written_at TEXT NOT NULL
            ) STRICT;";

        struct Original {
            _dir: tempfile::TempDir,
            path: std::path::PathBuf,
            run: FlowRunId,
            nodes: [NodeId; 2],
        }

        /// A WorldInterface database with two outputs and two globals.
        fn original() -> Original {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("wi.db");
            let (run, nodes) = (FlowRunId::new(), [NodeId::new(), NodeId::new()]);
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(ORIGINAL).unwrap();
            let output = "INSERT INTO outputs VALUES (?1, ?2, ?3, ?4)";
            let global = "INSERT INTO globals VALUES (?1, ?2, ?3)";
            conn.execute(
                output,
                params![
                    run.to_string(),
                    nodes[0].to_string(),
                    br#"{"greeting":"Hello, Ada!","n":1.50}"#.to_vec(),
                    "2024-05-01T12:34:56.123456789+00:00"
                ],
            )
            .unwrap();
            conn.execute(
                output,
                params![
                    run.to_string(),
                    nodes[1].to_string(),
                    b"null".to_vec(),
                    "2024-05-01T12:35:00+00:00"
                ],
            )
            .unwrap();
            conn.execute(
                global,
                params![
                    "coordinator",
                    br#"{"map":[1,2]}"#.to_vec(),
                    "2024-05-01T14:34:56.123Z"
                ],
            )
            .unwrap();
            conn.execute(
                global,
                params!["", br#""""#.to_vec(), "2024-05-01T12:00:00+02:00"],
            )
            .unwrap();
            Original {
                _dir: dir,
                path,
                run,
                nodes,
            }
        }

        /// Every row of both tables, and the two pragmas, as text.
        fn dump(path: &std::path::Path) -> Vec<String> {
            let conn = Connection::open(path).unwrap();
            let mut out: Vec<String> = ["application_id", "user_version"]
                .iter()
                .map(|p| {
                    let v: i64 = conn.pragma_query_value(None, p, |r| r.get(0)).unwrap();
                    format!("{p}={v}")
                })
                .collect();
            for sql in [
                "SELECT name || ':' || quote(sql) FROM sqlite_schema ORDER BY name",
                "SELECT quote(flow_run_id) || quote(node_id) || quote(value) || quote(written_at) \
                 FROM outputs ORDER BY rowid",
                "SELECT quote(key) || quote(value) || quote(written_at) FROM globals ORDER BY rowid",
            ] {
                let mut stmt = conn.prepare(sql).unwrap();
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
                out.extend(rows.map(Result::unwrap));
            }
            out
        }

        fn written_at(path: &std::path::Path, table: &str) -> Vec<i64> {
            let conn = Connection::open(path).unwrap();
            let mut stmt = conn
                .prepare(&format!("SELECT written_at FROM {table} ORDER BY rowid"))
                .unwrap();
            stmt.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }

        #[test]
        fn opening_converts_every_output_and_global_with_values_and_times() {
            let wi = original();
            let store = SqliteContextStore::open(&wi.path).unwrap();
            assert_eq!(
                store
                    .get_text(wi.run, wi.nodes[0])
                    .unwrap()
                    .unwrap()
                    .as_str(),
                r#"{"greeting":"Hello, Ada!","n":1.50}"#,
                "the value's text is kept byte for byte"
            );
            assert_eq!(store.get(wi.run, wi.nodes[1]).unwrap(), Some(json!(null)));
            let mut keys = store.list_keys(wi.run).unwrap();
            keys.sort();
            let mut expected = wi.nodes.to_vec();
            expected.sort();
            assert_eq!(keys, expected);
            assert_eq!(
                store.get_global("coordinator").unwrap(),
                Some(json!({"map": [1, 2]}))
            );
            assert_eq!(store.get_global("").unwrap(), Some(json!("")));
            // Write-once holds for the carried-over rows.
            assert!(matches!(
                store.put(wi.run, wi.nodes[0], &json!(2)),
                Err(ContextStoreError::AlreadyExists { .. })
            ));
            drop(store);
            assert_eq!(
                written_at(&wi.path, "outputs"),
                [1_714_566_896_123, 1_714_566_900_000]
            );
            assert_eq!(
                written_at(&wi.path, "globals"),
                [1_714_574_096_123, 1_714_557_600_000]
            );
        }

        #[test]
        fn a_second_open_changes_nothing() {
            let wi = original();
            drop(SqliteContextStore::open(&wi.path).unwrap());
            let once = dump(&wi.path);
            drop(SqliteContextStore::open(&wi.path).unwrap());
            assert_eq!(dump(&wi.path), once);
            assert_eq!(
                migrate_file(&wi.path).unwrap(),
                MigrationReport {
                    from_version: crate::store::schema::CURRENT_VERSION,
                    to_version: crate::store::schema::CURRENT_VERSION,
                    worldinterface: None,
                }
            );
        }

        #[test]
        fn migrate_file_reports_what_it_carried_over() {
            let wi = original();
            let report = migrate_file(&wi.path).unwrap();
            assert_eq!(
                report.worldinterface,
                Some(Converted {
                    outputs: 2,
                    globals: 2
                })
            );
            assert_eq!(report.from_version, 0);
            let store = SqliteContextStore::open_read_only(&wi.path, Default::default()).unwrap();
            assert_eq!(store.get(wi.run, wi.nodes[1]).unwrap(), Some(json!(null)));
        }

        #[test]
        fn a_read_only_open_names_the_way_to_convert() {
            let wi = original();
            let err = SqliteContextStore::open_read_only(&wi.path, Default::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("contextstore migrate"), "{err}");
        }

        fn refused_whole(bad_row: &str, expected: &[&str]) {
            let wi = original();
            Connection::open(&wi.path)
                .unwrap()
                .execute_batch(bad_row)
                .unwrap();
            let before = dump(&wi.path);
            let err = SqliteContextStore::open(&wi.path).unwrap_err().to_string();
            for part in expected {
                assert!(err.contains(part), "{part:?} not in {err}");
            }
            assert_eq!(
                dump(&wi.path),
                before,
                "a failed conversion changed the file"
            );
            let err = migrate_file(&wi.path).unwrap_err().to_string();
            assert!(err.contains(expected[0]), "{err}");
            assert_eq!(dump(&wi.path), before);
        }

        #[test]
        fn a_malformed_id_refuses_the_whole_conversion() {
            refused_whole(
                "INSERT INTO outputs VALUES ('not-a-uuid', '67e55044-10b1-426f-9247-bb680e5fe0c8', \
                 CAST('1' AS BLOB), '2024-05-01T12:00:00Z')",
                &["outputs row", "\"not-a-uuid\"", "invalid flow run id"],
            );
        }

        #[test]
        fn a_value_that_is_not_utf8_json_refuses_the_whole_conversion() {
            refused_whole(
                "INSERT INTO globals VALUES ('broken', X'FF00', '2024-05-01T12:00:00Z')",
                &["globals row (key \"broken\")", "not UTF-8"],
            );
            refused_whole(
                "INSERT INTO globals VALUES ('half', CAST('{\"a\":' AS BLOB), '2024-05-01T12:00:00Z')",
                &["globals row (key \"half\")", "not valid JSON"],
            );
        }

        #[test]
        fn a_time_that_is_not_rfc3339_refuses_the_whole_conversion() {
            refused_whole(
                "INSERT INTO outputs VALUES ('67e55044-10b1-426f-9247-bb680e5fe0c8', \
                 '67e55044-10b1-426f-9247-bb680e5fe0c9', CAST('1' AS BLOB), 'last tuesday')",
                &["outputs row", "\"last tuesday\" is not an RFC 3339 time"],
            );
        }

        #[test]
        fn other_tables_are_still_refused() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("near.db");
            // The original layout without STRICT is not the original.
            Connection::open(&path)
                .unwrap()
                .execute_batch(&ORIGINAL.replace(") STRICT;", ");"))
                .unwrap();
            let err = SqliteContextStore::open(&path).unwrap_err().to_string();
            assert!(err.contains("not a contextstore database"), "{err}");
        }
    }
}
