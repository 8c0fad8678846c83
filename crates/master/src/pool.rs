//! The workers connected to this master, and the batches waiting for them.
//!
//! Each worker stream runs its own loop: it takes a waiting batch only while
//! the worker has credit, so a slow worker is never flooded and a fast one is
//! never idle. Batches in flight on a stream that drops go back to the queue,
//! and so does a batch its worker has neither answered nor reported progress
//! on for the batch deadline (the first answer to come counts; a later one
//! is ignored).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crawler_core::ErrorCode;
use crawler_proto::v1::{
    self, MasterMessage, Registered, WorkerMessage, master_message,
    master_service_server::MasterService, worker_message,
};
use futures::{Stream, StreamExt};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// A batch and where its result must go.
#[derive(Clone)]
pub struct PendingBatch {
    pub batch: v1::Batch,
    pub reply: mpsc::UnboundedSender<v1::BatchResult>,
}

pub struct WorkerPool {
    master_id: String,
    queue_tx: mpsc::UnboundedSender<PendingBatch>,
    queue_rx: Mutex<mpsc::UnboundedReceiver<PendingBatch>>,
    next_batch_id: AtomicU64,
    connected: Arc<AtomicUsize>,
    redispatched: Arc<AtomicU64>,
    /// A batch unanswered this long is sent again.
    batch_deadline: Duration,
    shutdown: CancellationToken,
}

impl WorkerPool {
    pub fn new(
        master_id: String,
        batch_deadline: Duration,
        shutdown: CancellationToken,
        stats: &crate::Stats,
    ) -> Arc<Self> {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            master_id,
            queue_tx,
            queue_rx: Mutex::new(queue_rx),
            next_batch_id: AtomicU64::new(1),
            connected: stats.workers_connected.clone(),
            redispatched: stats.batches_redispatched.clone(),
            batch_deadline,
            shutdown,
        })
    }

    /// Queues `urls` for the next worker with credit; the result arrives on `reply`.
    pub fn dispatch(
        &self,
        job_id: &str,
        depth: u32,
        urls: Vec<String>,
        options: v1::CrawlOptions,
        reply: mpsc::UnboundedSender<v1::BatchResult>,
    ) -> u64 {
        let batch_id = self.next_batch_id.fetch_add(1, Ordering::Relaxed);
        let batch = v1::Batch {
            batch_id,
            job_id: job_id.to_string(),
            depth,
            urls,
            options: Some(options),
            // The crawl dispatches within its job's span: the worker's span joins it.
            trace: crawler_core::trace::current().into_iter().collect(),
        };
        // The receiver lives as long as the pool; sending cannot fail while we exist.
        let _ = self.queue_tx.send(PendingBatch { batch, reply });
        batch_id
    }

    async fn serve_worker(
        self: Arc<Self>,
        worker_id: String,
        mut inbound: Streaming<WorkerMessage>,
        out: mpsc::Sender<Result<MasterMessage, Status>>,
    ) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%worker_id, "worker connected");
        let mut credit: u32 = 0;
        let mut draining = false;
        let mut in_flight: HashMap<u64, (PendingBatch, Instant)> = HashMap::new();
        loop {
            let can_send = credit > 0 && !draining;
            let next_deadline = in_flight.values().map(|(_, due)| *due).min();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = sleep_until_some(next_deadline) => {
                    let now = Instant::now();
                    let late: Vec<u64> = in_flight
                        .iter()
                        .filter(|(_, (_, due))| *due <= now)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in late {
                        if let Some((pending, _)) = in_flight.remove(&id) {
                            tracing::warn!(%worker_id, batch_id = id, "a batch passed its deadline; sending it to another worker");
                            self.requeue(pending);
                        }
                    }
                }
                message = inbound.next() => match message {
                    Some(Ok(WorkerMessage { msg: Some(msg) })) => match msg {
                        worker_message::Msg::Credit(c) => credit = credit.saturating_add(c.amount),
                        worker_message::Msg::Result(result) => {
                            if let Some((pending, _)) = in_flight.remove(&result.batch_id) {
                                let _ = pending.reply.send(result);
                            }
                        }
                        worker_message::Msg::Progress(progress) => {
                            if let Some((_, due)) = in_flight.get_mut(&progress.batch_id) {
                                *due = Instant::now() + self.batch_deadline;
                            }
                        }
                        worker_message::Msg::Draining(_) => draining = true,
                        worker_message::Msg::Register(_) => {}
                    },
                    Some(Ok(_)) => {}
                    Some(Err(status)) => {
                        tracing::warn!(%worker_id, error = %status.message(), "worker stream failed");
                        break;
                    }
                    None => break,
                },
                next = self.take_batch(), if can_send => {
                    let Some(pending) = next else { break };
                    if pending.reply.is_closed() {
                        continue; // its job is gone
                    }
                    let message = MasterMessage { msg: Some(master_message::Msg::Batch(pending.batch.clone())) };
                    let batch_id = pending.batch.batch_id;
                    if out.send(Ok(message)).await.is_err() {
                        self.requeue(pending);
                        break;
                    }
                    credit -= 1;
                    in_flight.insert(batch_id, (pending, Instant::now() + self.batch_deadline));
                }
            }
        }
        let lost = in_flight.len();
        for (_, (pending, _)) in in_flight {
            self.requeue(pending);
        }
        self.connected.fetch_sub(1, Ordering::Relaxed);
        tracing::info!(%worker_id, requeued_batches = lost, "worker disconnected");
    }

    async fn take_batch(&self) -> Option<PendingBatch> {
        // Cancel-safe: a select! that drops this future loses no batch.
        self.queue_rx.lock().await.recv().await
    }

    fn requeue(&self, pending: PendingBatch) {
        if !pending.reply.is_closed() {
            self.redispatched.fetch_add(1, Ordering::Relaxed);
            let _ = self.queue_tx.send(pending);
        }
    }
}

/// Sleeps until `deadline`, or for ever when there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The gRPC face of the pool.
pub struct MasterGrpc {
    pub pool: Arc<WorkerPool>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<MasterMessage, Status>> + Send>>;

#[tonic::async_trait]
impl MasterService for MasterGrpc {
    type WorkStream = OutStream;

    async fn work(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let mut inbound = request.into_inner();
        let register = match inbound.next().await {
            Some(Ok(WorkerMessage {
                msg: Some(worker_message::Msg::Register(r)),
            })) => r,
            _ => {
                return Err(ErrorCode::InvalidMessage
                    .status("the first message on a work stream must be Register"));
            }
        };
        if register.protocol_version != crawler_proto::WORK_PROTOCOL_VERSION {
            return Err(ErrorCode::ProtocolMismatch.status(format!(
                "worker speaks protocol {}, this master speaks {}",
                register.protocol_version,
                crawler_proto::WORK_PROTOCOL_VERSION
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        let registered = MasterMessage {
            msg: Some(master_message::Msg::Registered(Registered {
                master_id: self.pool.master_id.clone(),
            })),
        };
        tx.send(Ok(registered))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        tokio::spawn(
            self.pool
                .clone()
                .serve_worker(register.worker_id, inbound, tx),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
