//! Tests of the conversion, the copy of the original and the way back.

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
    use super::*;
    use crate::{ContextStore, SqliteContextStore};
    use serde_json::json;

    /// The original store's schema, as it creates it (what
    /// `write_back` makes files with; `detect` checks the layout
    /// against its own column lists).
    const ORIGINAL: &str = ORIGINAL_SCHEMA;

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
                backup: None,
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
        assert_no_copy(&wi.path);
        let err = migrate_file(&wi.path).unwrap_err().to_string();
        assert!(err.contains(expected[0]), "{err}");
        assert_eq!(dump(&wi.path), before);
        assert_no_copy(&wi.path);
    }

    /// Neither the copy of the original nor its `.partial` is there.
    fn assert_no_copy(db: &std::path::Path) {
        let backup = backup_path(db);
        assert!(!backup.exists(), "{} was left", backup.display());
        let partial = suffixed(&backup, PARTIAL_SUFFIX);
        assert!(!partial.exists(), "{} was left", partial.display());
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

    /// `PRAGMA journal_mode` of the file at `path`.
    fn journal_mode(path: &std::path::Path) -> String {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn converting_keeps_the_original_beside_it_exactly_as_it_was() {
        let wi = original();
        let before = dump(&wi.path);
        let store = SqliteContextStore::open(&wi.path).unwrap();
        let backup = backup_path(&wi.path);
        assert_eq!(
            backup.file_name().unwrap().to_str().unwrap(),
            "wi.db.worldinterface-backup"
        );
        assert_eq!(dump(&backup), before, "the copy is not the original");
        assert_eq!(journal_mode(&backup), "wal");
        assert!(!suffixed(&backup, PARTIAL_SUFFIX).exists());
        // The original's own queries read the copy as they read the original.
        let conn = Connection::open(&backup).unwrap();
        let value: Vec<u8> = conn
            .query_row(
                "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
                params![wi.run.to_string(), wi.nodes[0].to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, br#"{"greeting":"Hello, Ada!","n":1.50}"#);
        drop(conn);
        drop(store);
        // Opening again converts nothing, and leaves the copy alone.
        let copy = std::fs::read(&backup).unwrap();
        drop(SqliteContextStore::open(&wi.path).unwrap());
        assert_eq!(std::fs::read(&backup).unwrap(), copy);
    }

    #[test]
    fn migrate_file_names_the_copy_it_kept() {
        let wi = original();
        let before = dump(&wi.path);
        let report = migrate_file(&wi.path).unwrap();
        let backup = backup_path(&wi.path);
        assert_eq!(report.backup.as_deref(), Some(backup.as_path()));
        assert_eq!(dump(&backup), before);
        assert_eq!(migrate_file(&wi.path).unwrap().backup, None);
    }

    #[test]
    fn a_file_in_rollback_journal_mode_is_copied_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&ORIGINAL.replace("PRAGMA journal_mode = WAL;", ""))
            .unwrap();
        conn.execute(
            "INSERT INTO globals VALUES ('k', CAST('[1]' AS BLOB), '2024-05-01T12:00:00Z')",
            [],
        )
        .unwrap();
        drop(conn);
        let before = dump(&path);
        let report = migrate_file(&path).unwrap();
        let backup = backup_path(&path);
        assert_eq!(report.backup.as_deref(), Some(backup.as_path()));
        assert_eq!(dump(&backup), before);
        assert_eq!(journal_mode(&backup), "delete");
    }

    #[test]
    fn an_existing_copy_refuses_the_conversion_and_is_kept() {
        let wi = original();
        let backup = backup_path(&wi.path);
        std::fs::write(&backup, b"an earlier copy").unwrap();
        let before = dump(&wi.path);
        for err in [
            SqliteContextStore::open(&wi.path).unwrap_err().to_string(),
            migrate_file(&wi.path).unwrap_err().to_string(),
        ] {
            assert!(err.contains(&backup.display().to_string()), "{err}");
            assert!(err.contains("already exists"), "{err}");
            assert!(err.contains("move that file"), "{err}");
            assert!(err.contains("nothing was changed"), "{err}");
        }
        assert_eq!(dump(&wi.path), before);
        assert_eq!(std::fs::read(&backup).unwrap(), b"an earlier copy");
        assert!(!suffixed(&backup, PARTIAL_SUFFIX).exists());
        // Moved away, the conversion goes ahead.
        std::fs::remove_file(&backup).unwrap();
        assert!(migrate_file(&wi.path).unwrap().worldinterface.is_some());
        assert_eq!(dump(&backup), before);
    }

    #[test]
    fn a_partial_copy_left_by_a_crash_is_replaced() {
        let wi = original();
        let partial = suffixed(&backup_path(&wi.path), PARTIAL_SUFFIX);
        std::fs::write(&partial, b"half a copy").unwrap();
        let before = dump(&wi.path);
        drop(SqliteContextStore::open(&wi.path).unwrap());
        assert_eq!(dump(&backup_path(&wi.path)), before);
        assert!(!partial.exists());
    }

    /// `depth` arrays, one inside the other, around `1`.
    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_original_reads_values_as_deep_as_original_read_depth() {
        let ok = nested(ORIGINAL_READ_DEPTH);
        assert!(serde_json::from_slice::<serde_json::Value>(ok.as_bytes()).is_ok());
        let deeper = nested(ORIGINAL_READ_DEPTH + 1);
        assert!(serde_json::from_slice::<serde_json::Value>(deeper.as_bytes()).is_err());
        assert!(!too_deep_for_original(&ok));
        assert!(too_deep_for_original(&deeper));
    }

    #[test]
    fn times_are_written_back_as_rfc3339_utc_milliseconds() {
        assert_eq!(
            rfc3339_millis(1_714_566_896_123).unwrap(),
            "2024-05-01T12:34:56.123Z"
        );
        assert_eq!(rfc3339_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(-1).unwrap(), "1969-12-31T23:59:59.999Z");
        for ms in [0, -1, 1_500, 1_714_566_896_123, 253_402_300_799_999] {
            assert_eq!(unix_millis(&rfc3339_millis(ms).unwrap()), Ok(ms));
        }
        for ms in [253_402_300_800_000, -62_167_219_200_001, i64::MAX, i64::MIN] {
            let err = rfc3339_millis(ms).unwrap_err();
            assert!(err.contains("outside the years"), "{err}");
        }
    }

    #[test]
    fn write_back_knows_every_table_and_column_of_the_schema() {
        // A migration that adds a table or a column must say here
        // what a write-back does with it.
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        let columns = |table: &str| -> Vec<String> {
            conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                .unwrap()
                .query_map([table], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let mut expected: Vec<&str> = vec!["flow_run_id", "node_id", "value", "written_at"];
        expected.extend(PROVENANCE_COLUMNS);
        assert_eq!(columns("outputs"), expected);
        assert_eq!(columns("globals"), ["key", "value", "written_at"]);
        let report = dropped(&conn).unwrap();
        let kinds: Vec<&str> = report.iter().map(|d| d.what.as_str()).collect();
        assert_eq!(kinds, ["provenance", "runs", "run_workers"]);
        assert!(report.iter().all(|d| d.count == 0));
    }

    /// Every output (by run, node) and global of a contextstore file,
    /// as stored: ids, the exact text and the time; no provenance.
    fn contents(path: &std::path::Path) -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut out = Vec::new();
        for sql in [
            "SELECT quote(flow_run_id) || quote(node_id) || quote(value) || quote(written_at) \
             FROM outputs ORDER BY flow_run_id, node_id",
            "SELECT quote(key) || quote(value) || quote(written_at) FROM globals ORDER BY key",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }

    /// The original store's reads of a file written back.
    struct OriginalReader(Connection);

    impl OriginalReader {
        fn open(path: &std::path::Path) -> Self {
            Self(Connection::open(path).unwrap())
        }

        fn get(&self, run: FlowRunId, node: NodeId) -> Option<serde_json::Value> {
            use rusqlite::OptionalExtension as _;
            let bytes: Option<Vec<u8>> = self
                .0
                .query_row(
                    "SELECT value FROM outputs WHERE flow_run_id = ?1 AND node_id = ?2",
                    params![run.to_string(), node.to_string()],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            bytes.map(|b| serde_json::from_slice(&b).unwrap())
        }

        fn list_keys(&self, run: FlowRunId) -> Vec<NodeId> {
            let mut keys: Vec<NodeId> = self
                .0
                .prepare("SELECT node_id FROM outputs WHERE flow_run_id = ?1")
                .unwrap()
                .query_map(params![run.to_string()], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|id| id.unwrap().parse().unwrap())
                .collect();
            keys.sort();
            keys
        }

        fn get_global(&self, key: &str) -> Option<serde_json::Value> {
            use rusqlite::OptionalExtension as _;
            let bytes: Option<Vec<u8>> = self
                .0
                .query_row("SELECT value FROM globals WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()
                .unwrap();
            bytes.map(|b| serde_json::from_slice(&b).unwrap())
        }
    }

    fn provenance() -> crate::store::Provenance {
        crate::store::Provenance {
            component_hash: "c".repeat(64),
            params_hash: "p".repeat(64),
            upstream_hash: "u".repeat(64),
            attempt: 2,
            host: "worker-1".into(),
            started_at: 1_714_566_896_000,
            ended_at: 1_714_566_897_000,
        }
    }

    #[test]
    fn a_round_trip_to_contextstore_and_back_keeps_every_output_and_global() {
        let wi = original();
        let before = dump(&wi.path);
        let store = SqliteContextStore::open(&wi.path).unwrap();
        assert_eq!(dump(&backup_path(&wi.path)), before);

        // Written after the conversion, through contextstore's API.
        let other_run = FlowRunId::new();
        let (late, with_provenance, large) = (NodeId::new(), NodeId::new(), NodeId::new());
        let deep_value: serde_json::Value =
            serde_json::from_str(&nested(ORIGINAL_READ_DEPTH)).unwrap();
        let large_value = json!({
            "rows": (0..20_000).map(|i| json!({"i": i, "s": "é\u{1F600}\\\"\n"})).collect::<Vec<_>>(),
        });
        store.put(wi.run, late, &json!({"late": true})).unwrap();
        store
            .put_text_with_provenance(
                other_run,
                with_provenance,
                &JsonText::parse("[1, 2.50, \"x\"]", MAX_DEPTH).unwrap(),
                &provenance(),
            )
            .unwrap();
        store.put(other_run, large, &large_value).unwrap();
        store
            .upsert_global("coordinator", &json!({"map": [3]}))
            .unwrap();
        store.upsert_global("", &json!({"empty key": 1})).unwrap();
        store.put_global("deep", &deep_value).unwrap();
        let too_deep = JsonText::parse(nested(ORIGINAL_READ_DEPTH + 1), MAX_DEPTH).unwrap();
        store.put_global_text("too deep", &too_deep).unwrap();
        store
            .put_global(
                &format!("journal/{other_run}/{large}"),
                &json!({"attempt": 1}),
            )
            .unwrap();
        // The runs index, which the original schema has no place for.
        let conn = Connection::open(&wi.path).unwrap();
        conn.execute(
            "INSERT INTO runs VALUES (?1, 'flow', 'hash', '{}', 2, 5, 0)",
            [other_run.as_bytes()],
        )
        .unwrap();
        for incarnation in [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()] {
            conn.execute(
                "INSERT INTO run_workers VALUES (?1, ?2, 'w', 5, 6, 1000, NULL, NULL)",
                params![other_run.as_bytes(), incarnation.as_bytes()],
            )
            .unwrap();
        }
        drop(conn);

        // Written back while the store is still open.
        let back = wi.path.with_file_name("back.db");
        let report = write_back(&wi.path, &back).unwrap();
        assert_eq!(report.path, back);
        assert_eq!((report.outputs, report.globals), (5, 5));
        let counts: Vec<(&str, u64)> = report
            .dropped
            .iter()
            .map(|d| (d.what.as_str(), d.count))
            .collect();
        assert_eq!(counts, [("provenance", 1), ("runs", 1), ("run_workers", 2)]);
        assert_eq!(report.too_deep_for_original, 1);
        assert!(!suffixed(&back, PARTIAL_SUFFIX).exists());

        // The original store's schema, and its reads.
        let made = wi.path.with_file_name("made.db");
        Connection::open(&made)
            .unwrap()
            .execute_batch(ORIGINAL)
            .unwrap();
        assert_eq!(
            dump(&back)[..4],
            dump(&made)[..4],
            "not the original schema"
        );
        assert_eq!(journal_mode(&back), "wal");
        let original = OriginalReader::open(&back);
        assert_eq!(
            original.get(wi.run, wi.nodes[0]),
            Some(json!({"greeting": "Hello, Ada!", "n": 1.5}))
        );
        assert_eq!(original.get(wi.run, wi.nodes[1]), Some(json!(null)));
        assert_eq!(original.get(wi.run, late), Some(json!({"late": true})));
        assert_eq!(
            original.get(other_run, with_provenance),
            Some(json!([1, 2.5, "x"]))
        );
        assert_eq!(original.get(other_run, large), Some(large_value));
        assert_eq!(original.get(other_run, NodeId::new()), None);
        let mut keys = vec![wi.nodes[0], wi.nodes[1], late];
        keys.sort();
        assert_eq!(original.list_keys(wi.run), keys);
        let mut keys = vec![with_provenance, large];
        keys.sort();
        assert_eq!(original.list_keys(other_run), keys);
        assert_eq!(
            original.get_global("coordinator"),
            Some(json!({"map": [3]}))
        );
        assert_eq!(original.get_global(""), Some(json!({"empty key": 1})));
        assert_eq!(original.get_global("deep"), Some(deep_value));
        assert_eq!(
            original.get_global(&format!("journal/{other_run}/{large}")),
            Some(json!({"attempt": 1}))
        );
        // Too deep for the original's reads, but there, byte for byte.
        let text: Vec<u8> = original
            .0
            .query_row(
                "SELECT value FROM globals WHERE key = 'too deep'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(text, nested(ORIGINAL_READ_DEPTH + 1).into_bytes());
        let time: String = original
            .0
            .query_row(
                "SELECT written_at FROM outputs WHERE node_id = ?1",
                [wi.nodes[0].to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(time, "2024-05-01T12:34:56.123Z");
        drop(original);

        // Converted forward again, it holds the same outputs and globals.
        drop(store);
        let again = SqliteContextStore::open(&back).unwrap();
        assert_eq!(
            again
                .get_text(other_run, with_provenance)
                .unwrap()
                .unwrap()
                .as_str(),
            "[1, 2.50, \"x\"]"
        );
        assert_eq!(again.provenance(other_run, with_provenance).unwrap(), None);
        drop(again);
        assert_eq!(contents(&back), contents(&wi.path));
    }

    #[test]
    fn a_conversion_written_back_is_the_original_again() {
        // With times as the write-back writes them, nothing differs.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wi.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(ORIGINAL).unwrap();
        for (i, value) in [&br#"{"a":1}"#[..], b"[ 1 , 2 ]", b"\"\xc3\xa9\""]
            .iter()
            .enumerate()
        {
            conn.execute(
                "INSERT INTO outputs VALUES (?1, ?2, ?3, ?4)",
                params![
                    FlowRunId::new().to_string(),
                    NodeId::new().to_string(),
                    value.to_vec(),
                    format!("2024-05-01T12:00:0{i}.12{i}Z")
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO globals VALUES (?1, ?2, ?3)",
                params![format!("k{i}"), value.to_vec(), "1999-12-31T23:59:59.999Z"],
            )
            .unwrap();
        }
        drop(conn);
        let before = dump(&path);
        migrate_file(&path).unwrap();
        let back = dir.path().join("back.db");
        let report = write_back(&path, &back).unwrap();
        assert!(report.dropped.iter().all(|d| d.count == 0), "{report:?}");
        assert_eq!(dump(&back), before);
    }

    #[test]
    fn write_back_refuses_an_existing_file_a_worldinterface_file_and_a_non_database() {
        let wi = original();
        let dir = wi.path.parent().unwrap().to_path_buf();
        let out = dir.join("out.db");
        let names = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let wi_before = dump(&wi.path);
        let files_before = names();
        // A WorldInterface file is already in the original format.
        let err = write_back(&wi.path, &out).unwrap_err().to_string();
        assert_eq!(
            names(),
            files_before,
            "write-back made files beside its source"
        );
        assert!(err.contains("WorldInterface database already"), "{err}");
        assert!(err.contains("wi.db"), "{err}");
        assert_eq!(dump(&wi.path), wi_before, "write-back converted its source");
        assert!(!backup_path(&wi.path).exists());
        assert!(!out.exists() && !suffixed(&out, PARTIAL_SUFFIX).exists());

        drop(SqliteContextStore::open(&wi.path).unwrap());
        let mut files_before = names();
        let written = dir.join("written.db");
        write_back(&wi.path, &written).unwrap();
        files_before.push("written.db".into());
        files_before.sort();
        // Beside the file written, only what any read-only open of a
        // closed WAL-mode file leaves (SQLite's -wal and -shm).
        let mut files: Vec<String> = names();
        files.retain(|n| n != "wi.db-wal" && n != "wi.db-shm");
        assert_eq!(files, files_before, "write-back left other files");
        // An existing file is never overwritten.
        std::fs::write(&out, b"keep me").unwrap();
        let err = write_back(&wi.path, &out).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert!(err.contains("out.db"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

        let fresh = dir.join("fresh.db");
        for (source, expected) in [
            (dir.join("none.db"), "no such database file"),
            (dir.join("junk.db"), "not a database"),
            (dir.join("empty.db"), "not a contextstore database"),
            (dir.join("users.db"), "not a contextstore database"),
            (
                std::path::PathBuf::from("postgres://u@localhost/db"),
                "SQLite files only",
            ),
        ] {
            if source.ends_with("junk.db") {
                std::fs::write(&source, b"not a database, only text. ".repeat(100)).unwrap();
            }
            if source.ends_with("empty.db") {
                std::fs::write(&source, b"").unwrap();
            }
            if source.ends_with("users.db") {
                Connection::open(&source)
                    .unwrap()
                    .execute_batch("CREATE TABLE users (id INTEGER)")
                    .unwrap();
            }
            let err = write_back(&source, &fresh).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected:?} not in {err}");
            assert!(!fresh.exists() && !suffixed(&fresh, PARTIAL_SUFFIX).exists());
        }
        // A stale partial file is replaced.
        std::fs::write(suffixed(&fresh, PARTIAL_SUFFIX), b"half").unwrap();
        write_back(&wi.path, &fresh).unwrap();
        assert!(!suffixed(&fresh, PARTIAL_SUFFIX).exists());
        assert_eq!(
            OriginalReader::open(&fresh).get_global("coordinator"),
            Some(json!({"map": [1, 2]}))
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
