//! The messages of a link, one enum per direction, and how each maps onto a frame: a kind byte,
//! a small JSON header and an optional payload. Headers whose meaning the engine owns travel as
//! [`Json`], untouched; the worker's first frame, [`Hello`], has a fixed binary layout because it
//! is the only thing ever read from a peer that has not yet proven it holds the session token.

use crate::frame::{encode_head, Frame, FrameError, Prefix, PREFIX_LEN};
use crate::secrets::Token;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Frame kinds. 0 is the transport's own keep-alive, never shown to the application.
pub(crate) mod kind {
    pub const PING: u8 = 0;
    pub const HELLO: u8 = 1;
    // worker -> driver
    pub const STARTED: u8 = 10;
    pub const PART: u8 = 11;
    pub const BEAT_W: u8 = 12;
    pub const OUTPUT: u8 = 13;
    pub const NEED_BLOB: u8 = 14;
    pub const REVOKED: u8 = 15;
    pub const BYE: u8 = 16;
    pub const CHECKPOINT_W: u8 = 17;
    // driver -> worker
    pub const WELCOME: u8 = 20;
    pub const REFUSED: u8 = 21;
    pub const ASSIGN: u8 = 22;
    pub const BLOB: u8 = 23;
    pub const REVOKE: u8 = 24;
    pub const STOP: u8 = 25;
    pub const FENCE: u8 = 26;
    pub const BEAT_D: u8 = 27;
    pub const CHECKPOINT_D: u8 = 28;
}

/// A JSON document the transport carries without interpreting it (the engine's chunk and result
/// headers, the worker configuration). It is checked to be valid JSON on arrival.
#[derive(Clone)]
pub struct Json(Box<RawValue>);

impl Json {
    /// Serialize any value.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Json, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Json)
    }

    /// Check and wrap JSON text.
    pub fn from_text(text: &str) -> Result<Json, serde_json::Error> {
        serde_json::from_str::<Box<RawValue>>(text).map(Json)
    }

    /// Deserialize into the application's type.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    fn from_header(kind: &'static str, header: &[u8]) -> Result<Json, FrameError> {
        serde_json::from_slice::<Box<RawValue>>(header)
            .map(Json)
            .map_err(|e| malformed(kind, e))
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of a worker's output streams an [`ToDriver::Output`] continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Out,
    Err,
}

/// Worker -> driver, after the driver's `Welcome`.
#[derive(Clone, PartialEq)]
pub enum ToDriver {
    /// The worker began an attempt of a chunk.
    Started { chunk: u64, attempt: u32 },
    /// A result or partial result of a chunk: the engine's header and the pickled values.
    Part { header: Json, payload: Bytes },
    /// Liveness counter, with what the worker is running right now.
    Beat {
        seq: u64,
        chunk: Option<u64>,
        task: Option<u32>,
    },
    /// More of the worker's stdout or stderr, starting at `offset` of that stream.
    Output {
        stream: Stream,
        offset: u64,
        bytes: Bytes,
    },
    /// The worker lacks a blob (e.g. the pickled function) that an assigned chunk needs.
    NeedBlob { id: u64 },
    /// Answer to `Revoke`: `ok` if the chunk was dropped before it started.
    Revoked { chunk: u64, ok: bool },
    /// The worker is leaving on purpose.
    Bye { reason: String },
    /// What interrupted task `task` of `chunk` left to resume from (docs/checkpoints.md),
    /// sent before the release part that names it.
    Checkpoint {
        chunk: u64,
        task: u32,
        payload: Bytes,
    },
}

/// Driver -> worker.
#[derive(Clone, PartialEq)]
pub enum ToWorker {
    /// The worker is admitted; `config` is the engine's worker configuration.
    Welcome { config: Json },
    /// The worker is not admitted (bad token, fenced, unknown worker) and should exit.
    Refused { reason: String },
    /// A chunk to run: the engine's header and the pickled calls.
    Assign { header: Json, payload: Bytes },
    /// A blob that chunks refer to by id.
    Blob { id: u64, payload: Bytes },
    /// Drop the chunk if it has not started; answer with `Revoked`.
    Revoke { chunk: u64 },
    /// Exit: after the current chunks (`graceful`) or at once.
    Stop { graceful: bool },
    /// The driver gave up on this worker; it must stop and exit without sending results.
    Fence { reason: String },
    /// The driver's liveness counter.
    Beat { seq: u64 },
    /// The checkpoint a `resume` assignment of `chunk` starts from, sent before it.
    Checkpoint {
        chunk: u64,
        task: u32,
        payload: Bytes,
    },
}

// Small headers of the transport's own messages.
#[derive(Serialize, Deserialize)]
struct ChunkAttempt {
    chunk: u64,
    attempt: u32,
}
#[derive(Serialize, Deserialize)]
struct WorkerBeat {
    seq: u64,
    #[serde(default)]
    chunk: Option<u64>,
    #[serde(default)]
    task: Option<u32>,
}
#[derive(Serialize, Deserialize)]
struct OutputHead {
    stream: Stream,
    offset: u64,
}
#[derive(Serialize, Deserialize)]
struct Id {
    id: u64,
}
#[derive(Serialize, Deserialize)]
struct ChunkOk {
    chunk: u64,
    ok: bool,
}
#[derive(Serialize, Deserialize)]
struct Chunk {
    chunk: u64,
}
#[derive(Serialize, Deserialize)]
struct ChunkTask {
    chunk: u64,
    task: u32,
}
#[derive(Serialize, Deserialize)]
struct Reason<'a> {
    #[serde(borrow)]
    reason: Cow<'a, str>,
}
impl<'a> Reason<'a> {
    fn of(reason: &'a str) -> Self {
        Reason {
            reason: Cow::Borrowed(reason),
        }
    }
}
#[derive(Serialize, Deserialize)]
struct Graceful {
    graceful: bool,
}
#[derive(Serialize, Deserialize)]
struct Seq {
    seq: u64,
}

fn malformed(kind: &'static str, e: impl fmt::Display) -> FrameError {
    FrameError::Malformed {
        kind,
        reason: e.to_string(),
    }
}

fn json<T: Serialize>(out: &mut Vec<u8>, kind: u8, head: &T, payload_len: u64) {
    // Plain structs of numbers and strings always serialize.
    let bytes = serde_json::to_vec(head).expect("transport headers are plain data");
    encode_head(out, kind, &bytes, payload_len);
}

fn head<'a, T: Deserialize<'a>>(name: &'static str, frame: &'a Frame) -> Result<T, FrameError> {
    if !frame.payload.is_empty() {
        return Err(malformed(name, "unexpected payload"));
    }
    serde_json::from_slice(&frame.header).map_err(|e| malformed(name, e))
}

fn head_with_payload<'a, T: Deserialize<'a>>(
    name: &'static str,
    frame: &'a Frame,
) -> Result<T, FrameError> {
    serde_json::from_slice(&frame.header).map_err(|e| malformed(name, e))
}

fn reason(name: &'static str, frame: &Frame) -> Result<String, FrameError> {
    head::<Reason>(name, frame).map(|r| r.reason.into_owned())
}

/// What both message enums offer the link: the frame they become and the frame they come from.
pub(crate) trait Message: Sized + Send + 'static {
    /// Kinds this direction may carry (the decoder refuses others before allocating).
    fn known(kind: u8) -> bool;
    /// Append prefix and header to `out`; return the payload, written after them.
    fn encode(&self, out: &mut Vec<u8>) -> Option<&Bytes>;
    fn decode(frame: Frame) -> Result<Self, FrameError>;
    /// Payload bytes, for queue accounting.
    fn payload_len(&self) -> u64;
}

impl Message for ToDriver {
    fn known(k: u8) -> bool {
        k == kind::PING || (kind::STARTED..=kind::CHECKPOINT_W).contains(&k)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Option<&Bytes> {
        match self {
            ToDriver::Started { chunk, attempt } => {
                let head = ChunkAttempt {
                    chunk: *chunk,
                    attempt: *attempt,
                };
                json(out, kind::STARTED, &head, 0);
                None
            }
            ToDriver::Part { header, payload } => {
                let len = payload.len() as u64;
                encode_head(out, kind::PART, header.as_str().as_bytes(), len);
                Some(payload)
            }
            ToDriver::Beat { seq, chunk, task } => {
                let head = WorkerBeat {
                    seq: *seq,
                    chunk: *chunk,
                    task: *task,
                };
                json(out, kind::BEAT_W, &head, 0);
                None
            }
            ToDriver::Output {
                stream,
                offset,
                bytes,
            } => {
                let head = OutputHead {
                    stream: *stream,
                    offset: *offset,
                };
                json(out, kind::OUTPUT, &head, bytes.len() as u64);
                Some(bytes)
            }
            ToDriver::NeedBlob { id } => {
                json(out, kind::NEED_BLOB, &Id { id: *id }, 0);
                None
            }
            ToDriver::Revoked { chunk, ok } => {
                let head = ChunkOk {
                    chunk: *chunk,
                    ok: *ok,
                };
                json(out, kind::REVOKED, &head, 0);
                None
            }
            ToDriver::Bye { reason } => {
                json(out, kind::BYE, &Reason::of(reason), 0);
                None
            }
            ToDriver::Checkpoint {
                chunk,
                task,
                payload,
            } => checkpoint(out, kind::CHECKPOINT_W, *chunk, *task, payload),
        }
    }

    fn decode(frame: Frame) -> Result<Self, FrameError> {
        Ok(match frame.kind {
            kind::STARTED => {
                let h: ChunkAttempt = head("Started", &frame)?;
                ToDriver::Started {
                    chunk: h.chunk,
                    attempt: h.attempt,
                }
            }
            kind::PART => ToDriver::Part {
                header: Json::from_header("Part", &frame.header)?,
                payload: frame.payload,
            },
            kind::BEAT_W => {
                let h: WorkerBeat = head("Beat", &frame)?;
                ToDriver::Beat {
                    seq: h.seq,
                    chunk: h.chunk,
                    task: h.task,
                }
            }
            kind::OUTPUT => {
                let h: OutputHead = head_with_payload("Output", &frame)?;
                ToDriver::Output {
                    stream: h.stream,
                    offset: h.offset,
                    bytes: frame.payload,
                }
            }
            kind::NEED_BLOB => ToDriver::NeedBlob {
                id: head::<Id>("NeedBlob", &frame)?.id,
            },
            kind::REVOKED => {
                let h: ChunkOk = head("Revoked", &frame)?;
                ToDriver::Revoked {
                    chunk: h.chunk,
                    ok: h.ok,
                }
            }
            kind::BYE => ToDriver::Bye {
                reason: reason("Bye", &frame)?,
            },
            kind::CHECKPOINT_W => {
                let h: ChunkTask = head_with_payload("Checkpoint", &frame)?;
                ToDriver::Checkpoint {
                    chunk: h.chunk,
                    task: h.task,
                    payload: frame.payload,
                }
            }
            other => return Err(FrameError::Kind(other)),
        })
    }

    fn payload_len(&self) -> u64 {
        match self {
            ToDriver::Part { payload, .. } => payload.len() as u64,
            ToDriver::Output { bytes, .. } => bytes.len() as u64,
            ToDriver::Checkpoint { payload, .. } => payload.len() as u64,
            _ => 0,
        }
    }
}

impl Message for ToWorker {
    fn known(k: u8) -> bool {
        k == kind::PING || (kind::WELCOME..=kind::CHECKPOINT_D).contains(&k)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Option<&Bytes> {
        match self {
            ToWorker::Welcome { config } => {
                encode_head(out, kind::WELCOME, config.as_str().as_bytes(), 0);
                None
            }
            ToWorker::Refused { reason } => {
                json(out, kind::REFUSED, &Reason::of(reason), 0);
                None
            }
            ToWorker::Assign { header, payload } => {
                let len = payload.len() as u64;
                encode_head(out, kind::ASSIGN, header.as_str().as_bytes(), len);
                Some(payload)
            }
            ToWorker::Blob { id, payload } => {
                json(out, kind::BLOB, &Id { id: *id }, payload.len() as u64);
                Some(payload)
            }
            ToWorker::Revoke { chunk } => {
                json(out, kind::REVOKE, &Chunk { chunk: *chunk }, 0);
                None
            }
            ToWorker::Stop { graceful } => {
                let head = Graceful {
                    graceful: *graceful,
                };
                json(out, kind::STOP, &head, 0);
                None
            }
            ToWorker::Fence { reason } => {
                json(out, kind::FENCE, &Reason::of(reason), 0);
                None
            }
            ToWorker::Beat { seq } => {
                json(out, kind::BEAT_D, &Seq { seq: *seq }, 0);
                None
            }
            ToWorker::Checkpoint {
                chunk,
                task,
                payload,
            } => checkpoint(out, kind::CHECKPOINT_D, *chunk, *task, payload),
        }
    }

    fn decode(frame: Frame) -> Result<Self, FrameError> {
        Ok(match frame.kind {
            kind::WELCOME => {
                if !frame.payload.is_empty() {
                    return Err(malformed("Welcome", "unexpected payload"));
                }
                ToWorker::Welcome {
                    config: Json::from_header("Welcome", &frame.header)?,
                }
            }
            kind::REFUSED => ToWorker::Refused {
                reason: reason("Refused", &frame)?,
            },
            kind::ASSIGN => ToWorker::Assign {
                header: Json::from_header("Assign", &frame.header)?,
                payload: frame.payload,
            },
            kind::BLOB => ToWorker::Blob {
                id: head_with_payload::<Id>("Blob", &frame)?.id,
                payload: frame.payload,
            },
            kind::REVOKE => ToWorker::Revoke {
                chunk: head::<Chunk>("Revoke", &frame)?.chunk,
            },
            kind::STOP => ToWorker::Stop {
                graceful: head::<Graceful>("Stop", &frame)?.graceful,
            },
            kind::FENCE => ToWorker::Fence {
                reason: reason("Fence", &frame)?,
            },
            kind::BEAT_D => ToWorker::Beat {
                seq: head::<Seq>("Beat", &frame)?.seq,
            },
            kind::CHECKPOINT_D => {
                let h: ChunkTask = head_with_payload("Checkpoint", &frame)?;
                ToWorker::Checkpoint {
                    chunk: h.chunk,
                    task: h.task,
                    payload: frame.payload,
                }
            }
            other => return Err(FrameError::Kind(other)),
        })
    }

    fn payload_len(&self) -> u64 {
        match self {
            ToWorker::Assign { payload, .. }
            | ToWorker::Blob { payload, .. }
            | ToWorker::Checkpoint { payload, .. } => payload.len() as u64,
            _ => 0,
        }
    }
}

fn checkpoint<'a>(
    out: &mut Vec<u8>,
    kind: u8,
    chunk: u64,
    task: u32,
    payload: &'a Bytes,
) -> Option<&'a Bytes> {
    json(out, kind, &ChunkTask { chunk, task }, payload.len() as u64);
    Some(payload)
}

fn debug_checkpoint(
    f: &mut fmt::Formatter<'_>,
    chunk: u64,
    task: u32,
    payload: &Bytes,
) -> fmt::Result {
    f.debug_struct("Checkpoint")
        .field("chunk", &chunk)
        .field("task", &task)
        .field("payload", &Len(payload.len()))
        .finish()
}

/// `Debug` shows payload sizes, never payload bytes (they may be hundreds of MB of pickles).
struct Len(usize);
impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

impl fmt::Debug for ToDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToDriver::Started { chunk, attempt } => f
                .debug_struct("Started")
                .field("chunk", chunk)
                .field("attempt", attempt)
                .finish(),
            ToDriver::Part { header, payload } => f
                .debug_struct("Part")
                .field("header", header)
                .field("payload", &Len(payload.len()))
                .finish(),
            ToDriver::Beat { seq, chunk, task } => f
                .debug_struct("Beat")
                .field("seq", seq)
                .field("chunk", chunk)
                .field("task", task)
                .finish(),
            ToDriver::Output {
                stream,
                offset,
                bytes,
            } => f
                .debug_struct("Output")
                .field("stream", stream)
                .field("offset", offset)
                .field("bytes", &Len(bytes.len()))
                .finish(),
            ToDriver::NeedBlob { id } => f.debug_struct("NeedBlob").field("id", id).finish(),
            ToDriver::Revoked { chunk, ok } => f
                .debug_struct("Revoked")
                .field("chunk", chunk)
                .field("ok", ok)
                .finish(),
            ToDriver::Bye { reason } => f.debug_struct("Bye").field("reason", reason).finish(),
            ToDriver::Checkpoint {
                chunk,
                task,
                payload,
            } => debug_checkpoint(f, *chunk, *task, payload),
        }
    }
}

impl fmt::Debug for ToWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToWorker::Welcome { config } => {
                f.debug_struct("Welcome").field("config", config).finish()
            }
            ToWorker::Refused { reason } => {
                f.debug_struct("Refused").field("reason", reason).finish()
            }
            ToWorker::Assign { header, payload } => f
                .debug_struct("Assign")
                .field("header", header)
                .field("payload", &Len(payload.len()))
                .finish(),
            ToWorker::Blob { id, payload } => f
                .debug_struct("Blob")
                .field("id", id)
                .field("payload", &Len(payload.len()))
                .finish(),
            ToWorker::Revoke { chunk } => f.debug_struct("Revoke").field("chunk", chunk).finish(),
            ToWorker::Stop { graceful } => {
                f.debug_struct("Stop").field("graceful", graceful).finish()
            }
            ToWorker::Fence { reason } => f.debug_struct("Fence").field("reason", reason).finish(),
            ToWorker::Beat { seq } => f.debug_struct("Beat").field("seq", seq).finish(),
            ToWorker::Checkpoint {
                chunk,
                task,
                payload,
            } => debug_checkpoint(f, *chunk, *task, payload),
        }
    }
}

/// A worker's introduction, the first frame it sends. The engine sees it in
/// `Event::Connected` (without the token, which the server has already checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub session: String,
    pub worker: String,
    /// Random per worker process: a job the site reruns under the same id is a new incarnation.
    pub incarnation: u64,
    pub host: String,
    pub pid: u32,
    /// How long the worker process took to get here (interpreter start-up and imports), in
    /// milliseconds on its own clock, if it knows.
    pub startup_ms: Option<u32>,
}

impl Hello {
    /// This process's introduction: a fresh random incarnation, this host's name and pid.
    pub fn for_this_process(session: &str, worker: &str) -> Hello {
        let mut nonce = [0u8; 8];
        // A failing OS generator leaves zeros, still a valid (if not unique) incarnation.
        let _ = getrandom::fill(&mut nonce);
        Hello {
            session: session.to_string(),
            worker: worker.to_string(),
            incarnation: u64::from_le_bytes(nonce),
            host: crate::bind::host_name().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            startup_ms: None,
        }
    }
}

/// Largest Hello body: token, incarnation, pid, start-up and three strings of at most 255 bytes.
pub(crate) const HELLO_MAX: usize = 32 + 8 + 4 + 4 + 3 * (1 + 255);

impl Hello {
    /// The whole Hello frame:
    /// `prefix(kind=HELLO, header_len=0) | token: 32 | incarnation: u64 LE | pid: u32 LE |
    /// startup_ms: u32 LE (u32::MAX: unknown) | (len: u8, utf-8) × session, worker, host`.
    pub(crate) fn encode(&self, token: &Token) -> Result<Vec<u8>, String> {
        let mut body = Vec::with_capacity(HELLO_MAX);
        body.extend_from_slice(token.as_bytes());
        body.extend_from_slice(&self.incarnation.to_le_bytes());
        body.extend_from_slice(&self.pid.to_le_bytes());
        let startup = self.startup_ms.unwrap_or(u32::MAX);
        body.extend_from_slice(&startup.to_le_bytes());
        for (name, value) in [
            ("session", &self.session),
            ("worker", &self.worker),
            ("host", &self.host),
        ] {
            check_field(name, value)?;
            body.push(value.len() as u8);
            body.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
        encode_head(&mut out, kind::HELLO, b"", body.len() as u64);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The length of the Hello body announced by a prefix, if the prefix is a Hello's.
    pub(crate) fn body_len(prefix: &[u8; PREFIX_LEN]) -> Result<usize, FrameError> {
        let limits = crate::frame::Limits {
            max_header: 0,
            max_payload: HELLO_MAX as u64,
        };
        let p = Prefix::decode(prefix, &limits, |k| k == kind::HELLO)?;
        Ok(p.payload_len as usize)
    }

    /// The token of a Hello body (checked before anything else is read from it).
    pub(crate) fn token_of(body: &[u8]) -> Option<&[u8]> {
        body.get(..32)
    }

    /// The rest of a Hello body, read only once its token matched.
    pub(crate) fn decode_authenticated(body: &[u8]) -> Result<Hello, FrameError> {
        let bad = |reason: &str| malformed("Hello", reason);
        let fixed = body.get(32..48).ok_or_else(|| bad("too short"))?;
        let incarnation = u64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
        let pid = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        let startup = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
        let mut rest = &body[48..];
        let mut field = |name: &str| -> Result<String, FrameError> {
            let (&len, tail) = rest
                .split_first()
                .ok_or_else(|| bad(&format!("{name} missing")))?;
            let len = usize::from(len);
            let bytes = tail
                .get(..len)
                .ok_or_else(|| bad(&format!("{name} truncated")))?;
            rest = &tail[len..];
            let value = std::str::from_utf8(bytes)
                .map_err(|_| bad(&format!("{name} is not UTF-8")))?
                .to_string();
            check_field(name, &value).map_err(|e| bad(&e))?;
            Ok(value)
        };
        let session = field("session")?;
        let worker = field("worker")?;
        let host = field("host")?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Hello {
            session,
            worker,
            incarnation,
            host,
            pid,
            startup_ms: (startup != u32::MAX).then_some(startup),
        })
    }
}

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.len() > 255 {
        return Err(format!("{name} is longer than 255 bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{name} {value:?} contains control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Decoder, Limits};
    use proptest::prelude::*;

    fn round_trip<M: Message + fmt::Debug + PartialEq>(msg: M) {
        let mut out = Vec::new();
        let payload = msg.encode(&mut out).cloned();
        if let Some(p) = &payload {
            out.extend_from_slice(p);
        }
        let mut dec = Decoder::new(Limits::default(), M::known);
        let (used, frame) = dec.feed(&out).unwrap();
        assert_eq!(used, out.len());
        let back = M::decode(frame.expect("one whole frame")).unwrap();
        assert_eq!(back, msg);
        assert_eq!(back.payload_len(), payload.map_or(0, |p| p.len() as u64));
    }

    #[test]
    fn every_worker_message_round_trips() {
        let header = Json::from_text(r#"{"chunk":3,"tasks":[1,2]}"#).unwrap();
        for msg in [
            ToDriver::Started {
                chunk: 3,
                attempt: 2,
            },
            ToDriver::Part {
                header,
                payload: Bytes::from_static(b"\x80\x05pickle"),
            },
            ToDriver::Beat {
                seq: u64::MAX,
                chunk: Some(9),
                task: None,
            },
            ToDriver::Output {
                stream: Stream::Err,
                offset: 1 << 40,
                bytes: Bytes::from_static(b"line\n"),
            },
            ToDriver::NeedBlob { id: 1 },
            ToDriver::Revoked {
                chunk: 4,
                ok: false,
            },
            ToDriver::Bye {
                reason: "done \"quoted\" ✓".into(),
            },
        ] {
            round_trip(msg);
        }
    }

    #[test]
    fn every_driver_message_round_trips() {
        for msg in [
            ToWorker::Welcome {
                config: Json::new(&serde_json::json!({"beat": 5})).unwrap(),
            },
            ToWorker::Refused {
                reason: "fenced".into(),
            },
            ToWorker::Assign {
                header: Json::from_text("null").unwrap(),
                payload: Bytes::from(vec![7u8; 100_000]),
            },
            ToWorker::Blob {
                id: 2,
                payload: Bytes::new(),
            },
            ToWorker::Revoke { chunk: 5 },
            ToWorker::Stop { graceful: true },
            ToWorker::Fence {
                reason: "given up".into(),
            },
            ToWorker::Beat { seq: 0 },
        ] {
            round_trip(msg);
        }
    }

    #[test]
    fn a_direction_refuses_the_other_directions_kinds() {
        let mut out = Vec::new();
        ToWorker::Stop { graceful: false }.encode(&mut out);
        let mut dec = Decoder::new(Limits::default(), ToDriver::known);
        assert_eq!(dec.feed(&out).unwrap_err(), FrameError::Kind(kind::STOP));
    }

    #[test]
    fn unexpected_payloads_and_bad_headers_are_malformed() {
        let frame = Frame {
            kind: kind::STARTED,
            header: br#"{"chunk":1,"attempt":1}"#.to_vec(),
            payload: Bytes::from_static(b"x"),
        };
        assert!(matches!(
            ToDriver::decode(frame),
            Err(FrameError::Malformed { .. })
        ));
        let frame = Frame {
            kind: kind::PART,
            header: b"{not json".to_vec(),
            payload: Bytes::new(),
        };
        assert!(matches!(
            ToDriver::decode(frame),
            Err(FrameError::Malformed { kind: "Part", .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any header bytes under any kind: decoding fails cleanly or yields a message, and a
        /// Hello body of any bytes never panics the fixed-layout reader.
        #[test]
        fn decoding_arbitrary_frames_never_panics(
            kind in 0u8..32,
            header in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                r#"\{"(chunk|attempt|seq|id|ok|reason|stream|offset|graceful)":(-?[0-9]{1,22}|true|null|"out"|"x"|\[\])\}"#
                    .prop_map(String::into_bytes),
            ],
            payload in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let frame = Frame { kind, header: header.clone(), payload: Bytes::from(payload) };
            let _ = ToDriver::decode(frame.clone());
            let _ = ToWorker::decode(frame);
            let _ = Hello::decode_authenticated(&header);
        }
    }

    #[test]
    fn debug_never_prints_payload_bytes() {
        let msg = ToWorker::Assign {
            header: Json::from_text("{}").unwrap(),
            payload: Bytes::from_static(b"secret pickle"),
        };
        let shown = format!("{msg:?}");
        assert!(shown.contains("<13 bytes>"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn each_process_introduction_is_a_new_incarnation() {
        let a = Hello::for_this_process("S", "w1");
        let b = Hello::for_this_process("S", "w1");
        assert_ne!(a.incarnation, b.incarnation);
        assert_eq!((a.pid, a.host.is_empty()), (std::process::id(), false));
        assert!(a.encode(&Token::random()).is_ok());
    }

    #[test]
    fn hello_fixed_layout_round_trips_and_rejects_bad_fields() {
        let token = Token::random();
        let hello = Hello {
            session: "20260101-000000-0123456789abcdef".into(),
            worker: "w0007".into(),
            incarnation: 0xdead_beef,
            host: "node-1.cluster".into(),
            pid: 4242,
            startup_ms: Some(1234),
        };
        let bytes = hello.encode(&token).unwrap();
        let prefix: &[u8; PREFIX_LEN] = bytes[..PREFIX_LEN].try_into().unwrap();
        let len = Hello::body_len(prefix).unwrap();
        let body = &bytes[PREFIX_LEN..];
        assert_eq!(len, body.len());
        assert_eq!(Hello::token_of(body).unwrap(), token.as_bytes());
        assert_eq!(Hello::decode_authenticated(body).unwrap(), hello);
        let unknown = Hello {
            startup_ms: None,
            ..hello.clone()
        };
        let bytes = unknown.encode(&token).unwrap();
        let decoded = Hello::decode_authenticated(&bytes[PREFIX_LEN..]).unwrap();
        assert_eq!(decoded.startup_ms, None);

        let long = Hello {
            host: "h".repeat(256),
            ..hello.clone()
        };
        assert!(long.encode(&token).unwrap_err().contains("host"));
        let control = Hello {
            worker: "w\n1".into(),
            ..hello
        };
        assert!(control.encode(&token).is_err());
        assert!(Hello::decode_authenticated(&body[..40]).is_err());
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(Hello::decode_authenticated(&trailing).is_err());
    }
}
