//! In-project vendor simulator (axum on loopback) for `demo` and the tests: faithful to the
//! vendor docs, with injectable faults and a ground truth to compare the lake against.

pub mod exotel;
pub mod exotel_calls;
pub mod faults;
pub mod voice_calls;
pub mod voicegain;
mod voicegain_rows;
pub mod vonage;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use tokio::sync::oneshot;

pub use faults::{FaultKind, FaultPlan};
pub use voice_calls::{Envelope, VcCall, VoiceCallsSim};
pub use voicegain::{VgCall, VoicegainSim};
pub use vonage::{VnSession, VonageSim};

/// State shared by the simulator's handlers.
#[derive(Default)]
pub struct Shared {
    pub voicegain: Mutex<VoicegainSim>,
    pub voice_calls: Mutex<VoiceCallsSim>,
    pub vonage: Mutex<VonageSim>,
    pub exotel: Mutex<exotel::AnalyzeSim>,
    pub faults: Mutex<FaultPlan>,
    /// Requests answered (faults included).
    pub requests: AtomicU64,
    /// Per vendor (first path segment): requests in flight now, and the most at once.
    pub in_flight: Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

/// Counts each vendor's requests in flight (for "a source never overlaps itself").
async fn count_in_flight(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let vendor = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    {
        let mut m = lock(&shared.in_flight);
        let e = m.entry(vendor.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    let r = next.run(req).await;
    if let Some(e) = lock(&shared.in_flight).get_mut(&vendor) {
        e.0 -= 1;
    }
    r
}

/// Locks a mutex, recovering from a poisoned one (a panicked handler must not wedge a test).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Simulator {
    /// Starts the simulator on `127.0.0.1:0` with the given Voicegain data.
    pub async fn start(voicegain: VoicegainSim) -> std::io::Result<Simulator> {
        let shared = Arc::new(Shared {
            voicegain: Mutex::new(voicegain),
            ..Shared::default()
        });
        let app: Router = voicegain::routes()
            .merge(voice_calls::routes())
            .merge(vonage::routes())
            .route(
                "/exotel/v1/Accounts/{sid}/Calls/{call}/ExoVoiceAnalyze.json",
                axum::routing::post(exotel::exo_voice_analyze),
            )
            .route(
                "/exotel/v1/Accounts/{sid}/Calls.json",
                axum::routing::get(exotel::calls_bulk),
            )
            .route(
                "/exotel/v1/Accounts/{sid}/Calls/{file}",
                axum::routing::get(exotel::call_single),
            )
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                count_in_flight,
            ))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Simulator {
            addr,
            shared,
            shutdown: Some(tx),
        })
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `base_url` for a Voicegain source.
    pub fn voicegain_base_url(&self) -> String {
        format!("{}/voicegain/v1", self.base_url())
    }

    /// The Voicegain data (to inspect the ground truth or change it between runs).
    pub fn voicegain(&self) -> MutexGuard<'_, VoicegainSim> {
        lock(&self.shared.voicegain)
    }

    /// The `base_url` for a voice-calls source.
    pub fn voice_calls_base_url(&self) -> String {
        format!("{}/voicecalls", self.base_url())
    }

    /// The voice-calls data.
    pub fn voice_calls(&self) -> MutexGuard<'_, VoiceCallsSim> {
        lock(&self.shared.voice_calls)
    }

    /// The `base_url` for a Vonage insights source.
    pub fn vonage_base_url(&self) -> String {
        format!("{}/vonage", self.base_url())
    }

    /// The Vonage insights data.
    pub fn vonage(&self) -> MutexGuard<'_, VonageSim> {
        lock(&self.shared.vonage)
    }

    /// Replaces the fault plan.
    pub fn set_faults(&self, plan: FaultPlan) {
        *lock(&self.shared.faults) = plan;
    }

    /// The `base_url` for an exotel_analyze source.
    pub fn exotel_base_url(&self) -> String {
        format!("{}/exotel", self.base_url())
    }

    /// The ExoVoiceAnalyze account.
    pub fn exotel(&self) -> MutexGuard<'_, exotel::AnalyzeSim> {
        lock(&self.shared.exotel)
    }

    /// The most requests to one vendor (`voicegain`, `vonage`, `voicecalls`) in flight at once.
    pub fn max_in_flight(&self, vendor: &str) -> u64 {
        lock(&self.shared.in_flight).get(vendor).map_or(0, |e| e.1)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
