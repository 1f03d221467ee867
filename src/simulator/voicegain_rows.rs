//! The simulated Voicegain export's rows: all 43 documented columns, filled the way real
//! exports are (many empty; UUIDs, random session ids, phone numbers, notes with quotes and new
//! lines, word clouds, keywords and markers on some calls).

/// One simulated call: the columns callsync maps (an empty string is an empty CSV cell),
/// and a seed from which the other documented columns are rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct VgCall {
    pub id: u64,
    /// Start, seconds since the epoch (UTC).
    pub start_secs: i64,
    pub duration_secs: u32,
    pub direction: String,
    pub external: String,
    pub internal: String,
    /// Empty on voice-bot calls that never reached an agent.
    pub agent_id: String,
    pub agent_name: String,
    pub queue_name: String,
    /// Absent on some calls.
    pub sentiment: Option<f64>,
    /// Multi-line, with quotes and commas; empty on some calls.
    pub notes: String,
    pub tags: Vec<String>,
    pub topics: Vec<String>,
    /// DONE, ERROR, or an unfinished phase (TRANSCRIBING, ANALYZING).
    pub phase: String,
    pub language: String,
    pub recording: String,
    /// A row whose startTime is not a time: must land in rejects.
    pub malformed: bool,
    /// Seed of the columns callsync does not map (rendered, not stored).
    pub seed: u64,
}

impl VgCall {
    /// Whether the call is finished (DONE or ERROR).
    pub fn is_final(&self) -> bool {
        self.phase == "DONE" || self.phase == "ERROR"
    }

    /// Whether a voice bot handled the call without an agent.
    pub fn is_bot_only(&self) -> bool {
        self.agent_id.is_empty()
    }
}

/// `MM-DD-YYYY h:mm:ss AM/PM`, UTC.
pub fn fmt_time(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%m-%d-%Y %-I:%M:%S %p").to_string())
        .unwrap_or_default()
}

pub(super) const AGENTS: &[(&str, &str, &str)] = &[
    ("436828", "Joe Shmoe", "joe"),
    ("436829", "Ana Lima", "ana.lima"),
    ("436830", "Wei Zhang", "wzhang"),
    ("436831", "Priya Nair", "priya"),
    ("436832", "Mateo García", "mateo.garcia"),
    ("436833", "Zoë O'Brien", "zoe"),
];
pub(super) const QUEUES: &[(&str, &str)] = &[
    ("873490", "Q-English-Member-Services"),
    ("873491", "Q-Spanish-Billing"),
    ("873492", "Q-Claims"),
    ("873493", "Q-Provider-Line"),
];
pub(super) const TAGS: &[&str] = &[
    "C_Member",
    "NEW_TAG",
    "V_Verified",
    "R_Coverage",
    "Escalated",
    "Callback",
];
pub(super) const TOPICS: &[&str] = &[
    "billing",
    "claim status",
    "address change",
    "cancel",
    "coverage question",
    "id card",
];
pub(super) const SENTENCES: &[&str] = &[
    "Caller asked about a claim.",
    "Agent verified identity and said \"it is approved\".",
    "Billing question, resolved.",
    "Customer upset, said: \"I've called three times, twice today\".",
    "Escalated to supervisor, callback promised.",
    "Address change, done in one call, no follow-up",
    "Member asked for a new ID card; mailed to the address on file.",
    "Provider called to check eligibility for a 12-visit plan.",
    "Caller could not hear the agent; call dropped, \"please call back\" left on voicemail.",
];
pub(super) const WORDS: &[&str] = &[
    "claim",
    "coverage",
    "member",
    "card",
    "bill",
    "payment",
    "address",
    "policy",
    "doctor",
    "visit",
    "plan",
    "deductible",
    "refund",
    "call",
    "today",
    "thanks",
    "number",
    "account",
    "premium",
    "provider",
    "network",
    "pharmacy",
    "prescription",
    "appointment",
    "balance",
];
pub(super) const MARKS: &[&str] = &[
    "CC_ANSWER",
    "CC_AGENT_ANSWER",
    "CC_HOLD",
    "CC_TRANSFER",
    "BOT_START",
];

/// A random UUID (v4 layout).
pub(super) fn uuid(rng: &mut fastrand::Rng) -> String {
    let (a, b) = (rng.u64(..), rng.u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// Random letters and digits, as Voicegain's session ids are.
fn token(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len).map(|_| rng.alphanumeric()).collect()
}

impl VgCall {
    /// The 43 CSV cells of this call, in `HEADER` order.
    pub fn cells(&self) -> Vec<String> {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let r = &mut rng;
        let start = fmt_time(self.start_secs);
        let end = fmt_time(self.start_secs + self.duration_secs as i64);
        let start_field = if self.malformed {
            "not-a-time".to_string()
        } else {
            start
        };
        let agent = AGENTS.iter().find(|a| a.0 == self.agent_id);
        let queue_id = QUEUES
            .iter()
            .find(|q| q.1 == self.queue_name)
            .map_or("", |q| q.0);
        // One call in `one_in` has the field.
        fn some(
            r: &mut fastrand::Rng,
            one_in: u8,
            f: impl FnOnce(&mut fastrand::Rng) -> String,
        ) -> String {
            if r.u8(0..one_in) == 0 {
                f(r)
            } else {
                String::new()
            }
        }
        let bot = self.is_bot_only() || r.u8(0..5) == 0;
        let qa = r.u8(0..8) == 0;
        let keywords = some(r, 3, |r| {
            let k: Vec<&str> = WORDS.iter().filter(|_| r.u8(0..8) == 0).copied().collect();
            k.join("|")
        });
        let word_cloud = some(r, 8, |r| {
            let n = r.usize(15..=50);
            let words: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        "{}:{}",
                        WORDS[(i * 7 + r.usize(0..3)) % WORDS.len()],
                        1 + r.u32(0..40)
                    )
                })
                .collect();
            words.join("|")
        });
        let markers = some(r, 4, |r| {
            let n = r.usize(1..=4);
            let m: Vec<String> = (0..n)
                .map(|_| {
                    format!(
                        "{},{},null",
                        r.u32(1000..400_000),
                        MARKS[r.usize(0..MARKS.len())]
                    )
                })
                .collect();
            m.join("|")
        });
        let cell = |s: &str| s.to_string();
        vec![
            cell("f9f32f4b-845d-4110-8b9a-4f8eef06cfe5"),
            cell("17396f85-57b1-446c-874b-e40037998113"),
            self.id.to_string(),
            start_field,
            end,
            self.duration_secs.to_string(),
            self.direction.clone(),
            self.external.clone(),
            self.internal.clone(),
            self.recording.clone(),
            token(r, 20),
            self.agent_id.clone(),
            agent.map_or_else(String::new, |a| format!("{}@example.com", a.2)),
            self.agent_name.clone(),
            // agent.userId: only agents who use the Speech Analytics App have one.
            if agent.is_some() && r.bool() {
                uuid(r)
            } else {
                String::new()
            },
            if agent.is_some() {
                cell("right")
            } else {
                String::new()
            },
            cell(queue_id),
            self.queue_name.clone(),
            self.sentiment.map_or_else(String::new, |s| s.to_string()),
            if qa { uuid(r) } else { String::new() },
            if qa {
                format!("{}", r.u8(40..=100))
            } else {
                String::new()
            },
            if qa {
                cell(["REVIEWED", "PENDING"][r.usize(0..2)])
            } else {
                String::new()
            },
            if qa && r.bool() {
                cell("Good empathy, missed the \"verify address\" step.")
            } else {
                String::new()
            },
            self.notes.clone(),
            self.tags.join("|"),
            keywords,
            self.topics.join("|"),
            some(r, 4, |r| cell(["true", "false"][r.usize(0..2)])),
            some(r, 4, |r| r.u8(0..4).to_string()),
            word_cloud,
            cell("2"),
            cell("2"),
            cell("2"),
            if bot { uuid(r) } else { String::new() },
            if bot { uuid(r) } else { String::new() },
            if bot {
                some(r, 3, |r| format!("{}", r.u64(1_000..9_000_000)))
            } else {
                String::new()
            },
            self.phase.clone(),
            if bot && !self.is_bot_only() {
                cell(["Internal", "Agency"][r.usize(0..2)])
            } else {
                String::new()
            },
            some(r, 3, |r| {
                format!("{}", 2_000_000_000 + r.u64(0..999_999_999))
            }),
            self.language.clone(),
            some(r, 10, |r| {
                let n = r.usize(1..=6);
                (0..n)
                    .map(|_| r.u8(0..10).to_string())
                    .collect::<Vec<_>>()
                    .join("|")
            }),
            some(r, 4, |r| r.u8(1..5).to_string()),
            markers,
        ]
    }
}

/// The 43 documented columns, in the documented order.
pub const HEADER: [&str; 43] = [
    "accountId",
    "contextId",
    "callId",
    "startTime",
    "endTime",
    "duration",
    "direction",
    "externalEndpoint",
    "internalEndpoint",
    "recording",
    "saSessionId",
    "agent.id",
    "agent.email",
    "agent.name",
    "agent.userId",
    "agent.channel",
    "queue.id",
    "queue.name",
    "sentiment",
    "crAnswersId",
    "score",
    "reviewStatus",
    "reviewNotes",
    "notes",
    "tags",
    "keywords",
    "topics",
    "isCallResolved",
    "incidents",
    "wordCloud",
    "numAudioChannels",
    "numSpkChannels",
    "version",
    "aivrAppId",
    "aivrSessionId",
    "originatingCallId",
    "progressPhase",
    "aivrTransferDestType",
    "callCenterCallId",
    "language",
    "dtmfEvents",
    "dailyRepeatCalls",
    "markers",
];
