//! Types several layers share (sources, the state, the lake, the pipeline), kept below all of
//! them so that none of those imports another for them: a source's opaque cursor, what the
//! lake tells a source kind about what it holds, a webhook delivery, an analysis job.

/// A source's position, stored opaquely by the state (each source has its own serde type).
pub type Cursor = serde_json::Value;

/// What a source's lake says about what was exported, for `repair` to rebuild a cursor
/// from (the lake reads the files; each kind decides what position is safe).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LakeFacts {
    /// The greatest call id that is a non-negative integer, in the data files and rejects.
    pub max_numeric_id: Option<u64>,
    /// The latest `started_at` in the data files, µs since the epoch.
    pub max_started_at: Option<i64>,
}

/// One webhook delivery as the inbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its place in the inbox: a push source's cursor.
    pub seq: i64,
    pub key: String,
    pub received_at_us: i64,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// Why it could not be parsed when it arrived (it goes to the rejects area).
    pub invalid: Option<String>,
}

/// An analysis job submitted to a vendor (Exotel ExoVoiceAnalyze), one per call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    pub call_sid: String,
    pub task_id: String,
    pub job_id: Option<String>,
    /// `waiting` (recorded, held back by a daily cap, never submitted), `submitting`
    /// (recorded, the vendor's answer not yet), `queued`, `done`, `failed` (the vendor's
    /// result or its refusal said so) or `timed_out`.
    pub status: String,
    pub submissions: i64,
    pub submitted_at_us: i64,
    pub reason: Option<String>,
    /// The result was exported, but the call-details API did not return its call (the row
    /// has no call time).
    pub no_call_details: bool,
}

/// The result of an analysis job a delivery carries, found by whichever of its ids the job
/// already knows (our task id, the vendor's job id, the call sid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    pub job_id: String,
    pub task_id: Option<String>,
    pub call_sid: Option<String>,
    pub succeeded: bool,
    pub reason: Option<String>,
}
