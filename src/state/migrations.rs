//! Versioned schema migrations of the state database, applied in order at open.

/// Each entry is one migration; its index + 1 is the version it brings the database to.
/// Never edit a released entry: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: sources, exported keys, commit manifest, runs.
    r#"
    CREATE TABLE sources (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        kind          TEXT NOT NULL,
        cursor        TEXT,
        rows_total    INTEGER NOT NULL DEFAULT 0,
        rejects_total INTEGER NOT NULL DEFAULT 0
    );
    -- One row per exported call: the exactly-once guard. Integer source id and no rowid
    -- keep it near the size of the call ids themselves.
    CREATE TABLE exported (
        source_id INTEGER NOT NULL,
        call_id   TEXT NOT NULL,
        PRIMARY KEY (source_id, call_id)
    ) WITHOUT ROWID;
    CREATE TABLE commits (
        id           TEXT PRIMARY KEY,
        source_id    INTEGER NOT NULL,
        run_id       INTEGER NOT NULL,
        committed_at TEXT NOT NULL,
        rows         INTEGER NOT NULL,
        rejects      INTEGER NOT NULL,
        cursor       TEXT
    );
    -- Staged file -> final path; published = 0 until the rename is done.
    CREATE TABLE manifest (
        staged     TEXT PRIMARY KEY,
        final_path TEXT NOT NULL,
        source_id  INTEGER NOT NULL,
        commit_id  TEXT NOT NULL,
        rows       INTEGER NOT NULL,
        bytes      INTEGER NOT NULL,
        published  INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX manifest_unpublished ON manifest (source_id) WHERE published = 0;
    CREATE TABLE runs (
        id         INTEGER PRIMARY KEY,
        source_id  INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at   TEXT,
        outcome    TEXT NOT NULL DEFAULT 'running',
        rows       INTEGER NOT NULL DEFAULT 0,
        rejects    INTEGER NOT NULL DEFAULT 0,
        error      TEXT
    );
    CREATE INDEX runs_by_source ON runs (source_id, id);
    "#,
    // 2: backfills (explicit date ranges), resumable: their own cursor, apart from the
    // source's incremental one.
    r#"
    CREATE TABLE backfills (
        id          INTEGER PRIMARY KEY,
        source_id   INTEGER NOT NULL,
        from_day    TEXT NOT NULL,
        to_day      TEXT NOT NULL,
        cursor      TEXT,
        status      TEXT NOT NULL DEFAULT 'running',
        rows        INTEGER NOT NULL DEFAULT 0,
        started_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        UNIQUE (source_id, from_day, to_day)
    );
    "#,
    // 3: commits by source, for the lake marker's checks and `repair`.
    r#"
    CREATE INDEX commits_by_source ON commits (source_id);
    "#,
    // 4: the webhook inbox: deliveries as received, committed before they are acknowledged;
    // the unique key absorbs redeliveries. `seq` is a push source's cursor.
    r#"
    CREATE TABLE inbox (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        source_id     INTEGER NOT NULL,
        delivery_key  TEXT NOT NULL,
        received_at   INTEGER NOT NULL,
        content_type  TEXT,
        headers       TEXT NOT NULL,
        body          BLOB NOT NULL,
        invalid       TEXT,
        UNIQUE (source_id, delivery_key)
    );
    CREATE INDEX inbox_by_source ON inbox (source_id, seq);
    "#,
    // 5: analysis jobs submitted to a vendor (Exotel ExoVoiceAnalyze), one row per call.
    r#"
    CREATE TABLE jobs (
        source_id    INTEGER NOT NULL,
        call_sid     TEXT NOT NULL,
        task_id      TEXT NOT NULL,
        job_id       TEXT,
        status       TEXT NOT NULL,
        submissions  INTEGER NOT NULL DEFAULT 0,
        submitted_at INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        reason       TEXT,
        PRIMARY KEY (source_id, call_sid)
    );
    CREATE INDEX jobs_by_job ON jobs (source_id, job_id);
    "#,
    // 6: rejects remembered (a re-listed identical record is not rejected again), each
    // source's last success (metrics across restarts), analysis jobs recorded before they are
    // submitted and found by task id too, and whether a result's call had details.
    r#"
    CREATE TABLE rejected (
        source_id  INTEGER NOT NULL,
        reject_key TEXT NOT NULL,
        hash       INTEGER NOT NULL,
        PRIMARY KEY (source_id, reject_key)
    ) WITHOUT ROWID;
    ALTER TABLE sources ADD COLUMN last_success_at INTEGER;
    UPDATE sources SET last_success_at = (
        SELECT CAST(strftime('%s', max(ended_at)) AS INTEGER) * 1000000 FROM runs
        WHERE runs.source_id = sources.id AND runs.outcome = 'ok');
    ALTER TABLE jobs ADD COLUMN no_call_details INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_by_task ON jobs (source_id, task_id);
    CREATE INDEX runs_by_start ON runs (started_at);
    "#,
    // 7: Delta tables: each commit's sequence number per source (the app transaction
    // version in the table's log), the counter it comes from, each data file's Delta
    // statistics (a commit is added to its table again after a crash with its stats), and
    // compactions in flight (recovery finishes or undoes them).
    r#"
    ALTER TABLE sources ADD COLUMN commit_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE commits ADD COLUMN seq INTEGER;
    ALTER TABLE manifest ADD COLUMN stats TEXT;
    CREATE TABLE compactions (
        id          TEXT PRIMARY KEY,
        source_id   INTEGER NOT NULL,
        dataset     TEXT NOT NULL,
        date        TEXT NOT NULL,
        removed     TEXT NOT NULL,
        added       TEXT,
        started_at  TEXT NOT NULL
    );
    "#,
    // 8: analysis jobs recorded before a daily cap lets them go (`waiting`, oldest first) and
    // when each call was first submitted (the cap counts first submissions per UTC day).
    r#"
    ALTER TABLE jobs ADD COLUMN first_submitted_at INTEGER;
    UPDATE jobs SET first_submitted_at = submitted_at WHERE submissions > 0;
    CREATE INDEX jobs_by_status ON jobs (source_id, status, submitted_at);
    CREATE INDEX jobs_by_first ON jobs (source_id, first_submitted_at);
    "#,
    // 9: each exported key's partition day (UTC days since the epoch), so the calls of a
    // committed file that is gone can be un-exported and fetched again; the table version a
    // compaction started from (recovery reads the log from there to learn whether its commit
    // landed); the manifest found by path (the state and the table held against each other).
    r#"
    ALTER TABLE exported ADD COLUMN day INTEGER;
    ALTER TABLE compactions ADD COLUMN base_version INTEGER;
    CREATE INDEX manifest_by_path ON manifest (source_id, final_path);
    "#,
    // 10: how far each source has checked each Delta table's log against the state: the
    // version checked, the highest app transaction `callsync/<source>` seen up to it, and the
    // highest commit sequence published to the table. A run reads only the log entries after
    // the version checked, instead of every file of the table.
    r#"
    CREATE TABLE table_checks (
        source_id     INTEGER NOT NULL,
        dataset       TEXT NOT NULL,
        version       INTEGER NOT NULL,
        txn_seen      INTEGER NOT NULL DEFAULT 0,
        published_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (source_id, dataset)
    );
    "#,
];
