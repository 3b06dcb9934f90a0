//! The production bus: NATS JetStream through `async-nats`.
//!
//! # Data flow
//!
//! ```text
//! JetStreamPublisher::publish(c)
//!   PUB {prefix}.{cluster}  header Nats-Msg-Id: {fingerprint}-{transition}-{state}
//!   └─> stream {stream} (subjects {prefix}.>, file storage, limits retention,
//!                        max_age, max_bytes, discard old, duplicate_window)
//!         └─> durable pull consumer {consumer} (deliver all, explicit ack, ack_wait,
//!                                               max_deliver)
//!               └─> JetStreamSubscriber::next ─> Delivery ─> Delivery::ack (confirmed)
//! ```
//!
//! [`JetStreamBus::connect`] connects and makes sure the stream exists with the
//! configured limits: it creates it, and when a stream of that name exists with other
//! limits (an earlier config), it updates the limits this crate manages (subjects, max
//! age, max bytes, duplicate window, replicas), keeping anything else an operator set.
//! [`JetStreamBus::subscriber`] does the same for the durable consumer (JetStream's
//! consumer create call updates an existing durable in place).
//!
//! # nats-server 2.9
//!
//! Debian ships nats-server 2.9, and `async-nats` 0.51 targets 2.10+ in places (KV
//! buckets and account info fail on 2.9). Everything used here works on 2.9 and was
//! tested against it: `create_stream`, `update_stream` and `get_stream` (the plain
//! `$JS.API.STREAM.*` requests), the consumer create request
//! (`$JS.API.CONSUMER.CREATE.<stream>.<consumer>`, where 2.9 ignores the `action` field
//! newer clients send), pull requests with idle heartbeats, and acks with confirmation.
//! The crate is built without `async-nats`'s `server_2_10` feature, so no 2.10-only
//! stream or consumer fields are sent.
//!
//! # Outages
//!
//! `async-nats` reconnects by itself, forever, with a backoff up to 4 s. While it is
//! disconnected a publish is queued in the client and its PubAck never comes, so
//! [`JetStreamPublisher::publish`] bounds the whole call by `request_timeout` and reports
//! [`BusError::Unavailable`]; the queued copy may still reach the server after the
//! reconnect, which the message id makes harmless. The subscriber reports missed pull
//! heartbeats (10 s of silence) as `Unavailable` and then starts over: it re-creates its
//! consumer (idempotent, and it brings back a consumer someone deleted) and pulls again,
//! retrying with a growing pause (200 ms to 5 s) until NATS answers.

mod config;

pub use config::{JetStreamConfig, NatsAuth};

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, PullConsumer};
use async_nats::jetstream::context::{CreateStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::{self as js, stream, AckKind};
use futures::StreamExt as _;

use crate::{Acker, AlertCandidate, BusError, ConsumerLag, Delivery, Publisher, Subscriber};
use config::{redact_url, Login};

/// Messages requested per pull. Pulled messages wait in the client until `next` takes
/// them, and their `ack_wait` runs meanwhile, so this stays small: candidates are few,
/// and a large prefetch would only turn a slow alerter into redeliveries.
const PULL_BATCH: usize = 32;
/// How long one pull request stays open on the server before the client renews it.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Idle heartbeat of a pull request: two missed ones tell the subscriber the server is
/// gone (reported as `Unavailable`) without waiting for TCP to notice.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Client PING interval; a dead connection is noticed after two unanswered PINGs, which
/// starts the reconnect sooner than the 60 s default would.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// First and longest pause between the subscriber's attempts to (re)create its consumer.
const RECREATE_MIN_DELAY: Duration = Duration::from_millis(200);
const RECREATE_MAX_DELAY: Duration = Duration::from_secs(5);

/// A connection to NATS with the alert stream in place; hands out publishers and
/// subscribers that share the connection.
#[derive(Clone)]
pub struct JetStreamBus {
    client: async_nats::Client,
    context: js::Context,
    config: Arc<JetStreamConfig>,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("config", &self.config)
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl JetStreamBus {
    /// Validates `config`, connects (within `connect_timeout`) and creates or updates the
    /// stream. Fails with [`BusError::Unavailable`] when NATS cannot be reached (call
    /// again later) and [`BusError::Rejected`] for an invalid config, bad credentials or a
    /// stream the server refuses (e.g. one with a different storage type).
    pub async fn connect(config: JetStreamConfig) -> Result<Self, BusError> {
        config.validate()?;
        let servers: Vec<async_nats::ServerAddr> = config
            .servers()
            .into_iter()
            .map(|server| {
                server.parse().map_err(|e| {
                    BusError::Rejected(format!("invalid NATS url {}: {e}", redact_url(server)))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut options = async_nats::ConnectOptions::new()
            .name("etcdmon")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .ping_interval(PING_INTERVAL)
            .require_tls(config.auth.tls());
        if let Some(ca) = &config.auth.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.auth.cert_file, &config.auth.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options = match config.auth.login()? {
            Login::None => options,
            Login::Token(t) => options.token(t.expose().to_owned()),
            Login::UserPassword(u, p) => options.user_and_password(u, p.expose().to_owned()),
            Login::NKey(seed) => options.nkey(seed.expose().to_owned()),
        };
        // The connector applies connection_timeout per server; the outer timeout bounds
        // the whole attempt over a list of servers too.
        let client = tokio::time::timeout(config.connect_timeout, options.connect(servers))
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "connect to NATS at {}: no connection within {:?}",
                    redact_url(&config.url),
                    config.connect_timeout
                ))
            })?
            .map_err(|e| connect_error(&config.url, &e))?;
        let mut context = js::new(client.clone());
        context.set_timeout(config.request_timeout);
        let bus = Self {
            client,
            context,
            config: Arc::new(config),
        };
        ensure_stream(&bus.context, &bus.config).await?;
        tracing::info!(url = %redact_url(&bus.config.url), stream = %bus.config.stream,
            "connected to NATS JetStream");
        Ok(bus)
    }

    /// A publisher on this connection; cheap, clone or create as many as needed.
    pub fn publisher(&self) -> JetStreamPublisher {
        JetStreamPublisher {
            context: self.context.clone(),
            config: self.config.clone(),
        }
    }

    /// Creates (or updates, or binds to) the durable pull consumer and returns a
    /// subscriber reading from it. A second subscriber with the same consumer name
    /// shares the work with the first.
    pub async fn subscriber(&self) -> Result<JetStreamSubscriber, BusError> {
        let consumer = create_consumer(&self.context, &self.config).await?;
        Ok(JetStreamSubscriber {
            context: self.context.clone(),
            config: self.config.clone(),
            consumer: Some(consumer),
            messages: None,
            pause: None,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    /// Whether the client is connected right now (for health endpoints and metrics).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Publishes candidates to the alert stream; see [`JetStreamPublisher::publish`].
#[derive(Clone)]
pub struct JetStreamPublisher {
    context: js::Context,
    config: Arc<JetStreamConfig>,
}

impl std::fmt::Debug for JetStreamPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamPublisher")
            .field("stream", &self.config.stream)
            .field("subject_prefix", &self.config.subject_prefix)
            .finish()
    }
}

#[async_trait::async_trait]
impl Publisher for JetStreamPublisher {
    /// Publishes on `{prefix}.{cluster}` with `Nats-Msg-Id` set to
    /// [`AlertCandidate::message_id`] and waits for the PubAck, all within
    /// `request_timeout`. A PubAck saying "duplicate" is success: the candidate is stored
    /// already. If the server answers that no stream captures the subject (it was
    /// deleted), the stream is created again and the publish retried once.
    async fn publish(&self, candidate: &AlertCandidate) -> Result<(), BusError> {
        if candidate.fingerprint.is_empty() {
            return Err(BusError::Rejected(
                "alert candidate without fingerprint".to_owned(),
            ));
        }
        let payload = serde_json::to_vec(candidate)
            .map_err(|e| BusError::Rejected(format!("serialize alert candidate: {e}")))?;
        let subject = crate::subject::subject(&self.config.subject_prefix, candidate);
        let id = candidate.message_id();
        let attempt = async {
            match self.send(&subject, &id, &payload).await {
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    tracing::warn!(stream = %self.config.stream, %subject,
                        "no stream captures the alert subject; creating it again");
                    ensure_stream(&self.context, &self.config).await?;
                    self.send(&subject, &id, &payload)
                        .await
                        .map_err(|e| publish_error(&subject, &e))
                }
                other => other.map_err(|e| publish_error(&subject, &e)),
            }
        };
        let ack = tokio::time::timeout(self.config.request_timeout, attempt)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "publish to {subject}: no PubAck within {:?}",
                    self.config.request_timeout
                ))
            })??;
        if ack.duplicate {
            tracing::debug!(%subject, message_id = %id, seq = ack.sequence,
                "alert candidate was stored before (duplicate message id)");
        }
        Ok(())
    }
}

impl JetStreamPublisher {
    /// The alerter's durable consumer as the server sees it, within `request_timeout`.
    pub async fn consumer_lag(&self) -> Result<ConsumerLag, BusError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
        let ask = async {
            let stream = self
                .context
                .get_stream_no_info(&self.config.stream)
                .await
                .map_err(|e| {
                    BusError::Unavailable(format!("stream {}: {e}", self.config.stream))
                })?;
            match stream.consumer_info(&self.config.consumer).await {
                Ok(info) => Ok(ConsumerLag::Present {
                    pending: info.num_pending,
                    unacknowledged: info.num_ack_pending as u64,
                }),
                Err(e) if matches!(e.kind(), Kind::NotFound | Kind::StreamNotFound) => {
                    Ok(ConsumerLag::Missing)
                }
                Err(e) => Err(BusError::Unavailable(format!(
                    "consumer {} on {}: {e}",
                    self.config.consumer, self.config.stream
                ))),
            }
        };
        tokio::time::timeout(self.config.request_timeout, ask)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "consumer {}: no answer within {:?}",
                    self.config.consumer, self.config.request_timeout
                ))
            })?
    }

    async fn send(
        &self,
        subject: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<js::publish::PublishAck, js::context::PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert("Content-Type", "application/json");
        self.context
            .publish_with_headers(subject.to_owned(), headers, payload.to_vec().into())
            .await?
            .await
    }
}

/// Reads candidates from the durable pull consumer; see [`JetStreamSubscriber::next`].
pub struct JetStreamSubscriber {
    context: js::Context,
    config: Arc<JetStreamConfig>,
    /// `None` after the server reported the consumer gone; re-created on the next call.
    consumer: Option<PullConsumer>,
    /// The pull loop; `None` until first used and after it ended.
    messages: Option<pull::Stream>,
    /// Delay before the next attempt to re-create consumer or pull loop, set after a
    /// failed attempt so a caller that retries at once does not spin.
    pause: Option<Duration>,
}

impl std::fmt::Debug for JetStreamSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSubscriber")
            .field("stream", &self.config.stream)
            .field("consumer", &self.config.consumer)
            .field("pulling", &self.messages.is_some())
            .finish()
    }
}

#[async_trait::async_trait]
impl Subscriber for JetStreamSubscriber {
    /// Waits for the next candidate from the durable consumer, in stream order (a
    /// redelivery comes when its `ack_wait` expires). Missed heartbeats and pull errors
    /// while the server is away are returned as [`BusError::Unavailable`]; the next call
    /// re-creates the consumer (after a pause if the last attempt failed) and pulls
    /// again, so a consumer deleted on the server comes back too. A message that is not a valid candidate is logged and terminated
    /// (never redelivered), so one bad message cannot block the consumer.
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if let Some(pause) = self.pause {
                tokio::time::sleep(pause).await;
            }
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => match self.open().await {
                    Ok(messages) => {
                        self.pause = None;
                        self.messages.insert(messages)
                    }
                    Err(e) => {
                        let pause = self.pause.map_or(RECREATE_MIN_DELAY, |p| p * 2);
                        self.pause = Some(pause.min(RECREATE_MAX_DELAY));
                        return Err(e);
                    }
                },
            };
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    use pull::MessagesErrorKind as Kind;
                    match e.kind() {
                        // A failed pull request: the loop sends the next one by itself.
                        Kind::Pull | Kind::Other => {}
                        // The loop ended (consumer deleted, limits) or is talking to
                        // nobody: no responders means no consumer behind the pull
                        // subject, and missed heartbeats mean either a lost connection
                        // or a consumer that vanished without telling. Start over,
                        // re-creating the consumer (idempotent) on the next call; the
                        // pause after a failed attempt paces this while NATS is away.
                        // Messages the old loop had fetched but not handed out are
                        // redelivered after ack_wait.
                        _ => {
                            self.messages = None;
                            self.consumer = None;
                        }
                    }
                    return Err(BusError::Unavailable(format!(
                        "receive from consumer {}: {e}",
                        self.config.consumer
                    )));
                }
                None => {
                    self.messages = None;
                    return Err(BusError::Unavailable(format!(
                        "message stream of consumer {} ended",
                        self.config.consumer
                    )));
                }
            };
            let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
            match serde_json::from_slice::<AlertCandidate>(&message.payload) {
                Ok(candidate) => {
                    return Ok(Delivery {
                        candidate,
                        redelivered: u64::try_from(delivered.saturating_sub(1)).unwrap_or(0),
                        acker: Acker::JetStream {
                            message: Box::new(message),
                            timeout: self.config.request_timeout,
                        },
                    });
                }
                Err(e) => {
                    tracing::error!(subject = %message.subject, error = %e,
                        "dropping a message that is not an alert candidate");
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(error = %e, "could not terminate the bad message");
                    }
                }
            }
        }
    }
}

impl JetStreamSubscriber {
    /// Starts the pull loop, re-creating the consumer first if it is gone.
    async fn open(&mut self) -> Result<pull::Stream, BusError> {
        let consumer = match &self.consumer {
            Some(consumer) => consumer.clone(),
            None => {
                let consumer = create_consumer(&self.context, &self.config).await?;
                self.consumer.insert(consumer).clone()
            }
        };
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages();
        tokio::time::timeout(self.config.request_timeout, messages)
            .await
            .map_err(|_| {
                BusError::Unavailable(format!(
                    "start pulling from consumer {}: timed out",
                    self.config.consumer
                ))
            })?
            .map_err(|e| {
                BusError::Unavailable(format!(
                    "start pulling from consumer {}: {e}",
                    self.config.consumer
                ))
            })
    }
}

/// Acks `message` and waits for the server's confirmation, within `timeout`.
pub(crate) async fn ack(message: &js::Message, timeout: Duration) -> Result<(), BusError> {
    match tokio::time::timeout(timeout, message.double_ack()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BusError::Unavailable(format!("ack: {e}"))),
        Err(_) => Err(BusError::Unavailable(format!(
            "ack: no confirmation within {timeout:?}"
        ))),
    }
}

/// The stream config this crate wants.
fn stream_config(config: &JetStreamConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        description: Some("etcdmon alert candidates (collector -> alerter)".to_owned()),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: config.max_age,
        // validate() keeps it within i64.
        max_bytes: i64::try_from(config.max_bytes).unwrap_or(i64::MAX),
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        ..stream::Config::default()
    }
}

/// Creates the stream, or updates the limits we manage when it exists with other ones.
///
/// Create first: on 2.9 (and later) creating a stream that exists with an identical
/// config succeeds, so the common case is one request. "Exists with a different config"
/// (error 10058) then reads the existing config and updates only our fields.
async fn ensure_stream(context: &js::Context, config: &JetStreamConfig) -> Result<(), BusError> {
    let want = stream_config(config);
    let err = match context.create_stream(want.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    match err.kind() {
        CreateStreamErrorKind::JetStream(e)
            if e.error_code() == js::ErrorCode::STREAM_NAME_EXIST => {}
        _ => return Err(stream_error("create stream", &config.stream, &err)),
    }
    let existing = context
        .get_stream(&config.stream)
        .await
        .map_err(|e| BusError::Unavailable(format!("read stream {}: {e}", config.stream)))?;
    let mut update = existing.cached_info().config.clone();
    if update.storage != want.storage {
        return Err(BusError::Rejected(format!(
            "stream {} exists with {:?} storage; alert candidates need file storage \
             (delete the stream or choose another name)",
            config.stream, update.storage
        )));
    }
    update.subjects = want.subjects;
    update.max_age = want.max_age;
    update.max_bytes = want.max_bytes;
    update.duplicate_window = want.duplicate_window;
    update.num_replicas = want.num_replicas;
    context
        .update_stream(update)
        .await
        .map_err(|e| stream_error("update stream", &config.stream, &e))?;
    tracing::info!(stream = %config.stream, "updated the alert stream's limits to the config");
    Ok(())
}

/// Creates the durable pull consumer, or updates it to the configured values.
async fn create_consumer(
    context: &js::Context,
    config: &JetStreamConfig,
) -> Result<PullConsumer, BusError> {
    let wanted = pull::Config {
        durable_name: Some(config.consumer.clone()),
        description: Some("etcdmon alerter".to_owned()),
        // A new consumer starts at the oldest retained candidate: candidates published
        // before the alerter's first start are not lost (the alerter judges staleness by
        // `evaluated_ms`).
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        ..pull::Config::default()
    };
    context
        .create_consumer_on_stream(wanted, config.stream.clone())
        .await
        .map_err(|e| {
            let text = format!(
                "create consumer {} on {}: {e}",
                config.consumer, config.stream
            );
            match e.kind() {
                stream::ConsumerErrorKind::JetStream(js) if js.code() < 500 => {
                    BusError::Rejected(text)
                }
                stream::ConsumerErrorKind::InvalidName
                | stream::ConsumerErrorKind::InvalidConsumerType => BusError::Rejected(text),
                _ => BusError::Unavailable(text),
            }
        })
}

fn stream_error(action: &str, stream: &str, err: &js::context::CreateStreamError) -> BusError {
    let text = format!("{action} {stream}: {err}");
    match err.kind() {
        CreateStreamErrorKind::JetStream(e) if e.code() < 500 => BusError::Rejected(text),
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet => BusError::Rejected(text),
        _ => BusError::Unavailable(text),
    }
}

fn publish_error(subject: &str, err: &js::context::PublishError) -> BusError {
    let text = format!("publish to {subject}: {err}");
    match err.kind() {
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => BusError::Rejected(text),
        PublishErrorKind::Other => {
            // A JetStream error answer: 4xx is about the message (too large for the
            // stream, ...) and will not change; 5xx (insufficient resources, no leader
            // during an election) is temporary. Anything else is a transport problem.
            use std::error::Error as _;
            match err
                .source()
                .and_then(|source| source.downcast_ref::<js::Error>())
            {
                Some(e) if e.code() < 500 => BusError::Rejected(text),
                _ => BusError::Unavailable(text),
            }
        }
        _ => BusError::Unavailable(text),
    }
}

fn connect_error(url: &str, err: &async_nats::ConnectError) -> BusError {
    use async_nats::ConnectErrorKind as Kind;
    let text = format!("connect to NATS at {}: {err}", redact_url(url));
    match err.kind() {
        Kind::ServerParse | Kind::Authentication | Kind::AuthorizationViolation | Kind::Tls => {
            BusError::Rejected(text)
        }
        _ => BusError::Unavailable(text),
    }
}
