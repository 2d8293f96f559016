//! What each HTTP/2 stream answers: the HTTP/1 routes over h2c (same profiles and stalls,
//! echo, sink, bytes, failures), h2-only failure routes, and the gRPC TTS service (the
//! profile's delay and `--stall` before the answer). Per-stream state is a [`Job`]; `pump`
//! pushes queued bodies into the codec as the windows allow.
//!
//! h2-only routes: `/refuse` (RST_STREAM REFUSED_STREAM), `/reset` (head, a few bytes, then
//! RST_STREAM INTERNAL_ERROR), `/goaway` (GOAWAY naming this stream, then the answer),
//! `/goaway-graceful` (the two-step GOAWAY), `/trailers` (a body and response trailers).
//! `/echo` echoes request trailers as response trailers; `/bytes/N?chunked=1` ends with an
//! `x-checksum` trailer. `/close` sends 10 of 100 promised bytes then resets the stream;
//! `/garbage` ends the connection with GOAWAY PROTOCOL_ERROR.
//!
//! gRPC answers carry `x-backend` in the head and in the trailers of an OK call, and echo
//! `x-echo-*` request metadata in both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use corelb::h2::{Connection, ErrorCode, Fields, StreamId};
use prost::Message;

use crate::conn::Ctx;
use crate::grpc::{self, code, Method};
use crate::response::{pattern, pattern_sum, status_has_body, PATTERN_RUN};
use crate::route::Route;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a stream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Http(Route),
    Reset,
    GoAway,
    Trailers,
    Grpc(Method),
}

/// Request metadata a gRPC answer echoes: `x-echo-*` fields come back in the initial and in
/// the trailing metadata (values as received, so `-bin` fields stay base64).
const ECHO_PREFIX: &[u8] = b"x-echo-";

/// How a stream ends once its body is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// More is coming (echo, streamed chunks, delayed answer).
    Open,
    End,
    Trailers(Pairs),
    Reset(ErrorCode),
}

/// Server-streaming progress.
#[derive(Debug, Clone)]
pub struct Chunks {
    next: u32,
    total: u32,
    bytes: usize,
    interval: Duration,
    /// `--close-rate`: reset before this chunk.
    cut_at: Option<u32>,
    /// The next chunk may go (its timer fired, or no interval).
    ready: bool,
}

pub struct Job {
    work: Work,
    head_only: bool,
    /// gRPC request body, or the `/headers` dump.
    body: Vec<u8>,
    sink: (u64, u64),
    head_sent: bool,
    due: Option<Instant>,
    /// The delay of a scheduled answer, reported as its latency.
    delay: Duration,
    out: Vec<u8>,
    out_pos: usize,
    /// `/bytes` pattern still to send: (next, end).
    pattern: Option<(u64, u64)>,
    chunks: Option<Chunks>,
    finish: Finish,
    /// gRPC: the `x-echo-*` request metadata.
    echo: Pairs,
}

impl Job {
    fn new(work: Work, head_only: bool) -> Self {
        Job {
            work,
            head_only,
            body: Vec::new(),
            sink: (0, 0),
            head_sent: false,
            due: None,
            delay: Duration::ZERO,
            out: Vec::new(),
            out_pos: 0,
            pattern: None,
            chunks: None,
            finish: Finish::Open,
            echo: Vec::new(),
        }
    }
}

/// The streams of one connection and what they may touch.
pub struct App<'a> {
    pub h2: &'a mut Connection,
    pub jobs: &'a mut HashMap<StreamId, Job>,
    pub counted: &'a mut bool,
    pub conn_id: u64,
    pub grpc: bool,
}

fn status_bytes(code: u16) -> [u8; 3] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

impl App<'_> {
    fn count(&mut self, ctx: &mut Ctx<'_>) {
        ctx.thread.request();
        if !*self.counted {
            *self.counted = true;
            ctx.thread.connection();
        }
    }

    /// Sends a response head with `x-backend`; `end` when there is no body.
    fn head(
        &mut self,
        ctx: &Ctx<'_>,
        id: StreamId,
        status: u16,
        extra: &[(&[u8], &[u8])],
        end: bool,
    ) {
        let st = status_bytes(status);
        let mut fields: Vec<(&[u8], &[u8])> =
            vec![(b":status", &st), (b"x-backend", ctx.cfg.id.as_bytes())];
        fields.extend_from_slice(extra);
        let _ = self.h2.send_headers(id, &fields, end);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.head_sent = true;
            if end {
                job.finish = Finish::End;
            }
        }
        if end {
            self.jobs.remove(&id);
        }
    }

    /// A complete small response.
    fn simple(&mut self, ctx: &Ctx<'_>, id: StreamId, status: u16, ctype: &str, body: &[u8]) {
        let head_only = self.jobs.get(&id).is_some_and(|j| j.head_only);
        let len = body.len().to_string();
        let extra: [(&[u8], &[u8]); 2] = [
            (b"content-type", ctype.as_bytes()),
            (b"content-length", len.as_bytes()),
        ];
        if head_only || body.is_empty() {
            return self.head(ctx, id, status, &extra, true);
        }
        self.head(ctx, id, status, &extra, false);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.out.extend_from_slice(body);
            job.finish = Finish::End;
        }
    }

    /// A gRPC Trailers-Only answer (an error, or an empty OK).
    fn grpc_status(&mut self, ctx: &Ctx<'_>, id: StreamId, status: u32, message: &str) {
        let s = status.to_string();
        let m = grpc::encode_message(message);
        let extra: [(&[u8], &[u8]); 3] = [
            (b"content-type", b"application/grpc"),
            (b"grpc-status", s.as_bytes()),
            (b"grpc-message", m.as_bytes()),
        ];
        self.head(ctx, id, 200, &extra, true);
    }

    /// A gRPC response head with the echoed metadata; messages and trailers follow.
    fn grpc_head(&mut self, ctx: &Ctx<'_>, id: StreamId) {
        let echo = self
            .jobs
            .get(&id)
            .map(|j| j.echo.clone())
            .unwrap_or_default();
        let mut extra: Vec<(&[u8], &[u8])> = vec![(b"content-type", b"application/grpc")];
        extra.extend(echo.iter().map(|(n, v)| (&n[..], &v[..])));
        self.head(ctx, id, 200, &extra, false);
    }

    /// The trailers of a successful call: status 0, `x-backend` and the echoed metadata.
    fn grpc_ok(job: &Job, backend: &str) -> Finish {
        let mut t = vec![
            (b"grpc-status".to_vec(), code::OK.to_string().into_bytes()),
            (b"x-backend".to_vec(), backend.as_bytes().to_vec()),
        ];
        t.extend(job.echo.iter().cloned());
        Finish::Trailers(t)
    }

    pub fn on_headers(&mut self, ctx: &mut Ctx<'_>, id: StreamId, fields: &Fields, end: bool) {
        let path = fields.path().unwrap_or(b"/");
        let head_only = fields.method() == Some(b"HEAD");
        let refuse = ctx.cfg.refuse_rate;
        if refuse > 0.0 && ctx.rng.next_f64() < refuse {
            self.h2.reset(id, ErrorCode::REFUSED_STREAM);
            return;
        }
        if self.grpc {
            return self.grpc_headers(ctx, id, fields, end);
        }
        let work = match path {
            b"/refuse" => {
                self.h2.reset(id, ErrorCode::REFUSED_STREAM);
                return;
            }
            b"/reset" => Work::Reset,
            b"/goaway" | b"/goaway-graceful" => Work::GoAway,
            b"/trailers" => Work::Trailers,
            _ => match std::str::from_utf8(path).map(Route::of) {
                Ok(Ok(route)) => Work::Http(route),
                _ => {
                    self.jobs.insert(id, Job::new(Work::Reset, head_only));
                    return self.simple(ctx, id, 400, "text/plain", b"Bad Request\n");
                }
            },
        };
        if !matches!(work, Work::Http(r) if !r.counted()) {
            self.count(ctx);
        }
        let mut job = Job::new(work, head_only);
        match work {
            Work::GoAway if path == b"/goaway" => self.h2.go_away(ErrorCode::NO_ERROR),
            Work::GoAway => self.h2.go_away_graceful(),
            Work::Http(Route::Headers) => {
                for (n, v) in fields.iter() {
                    job.body.extend_from_slice(n);
                    job.body.extend_from_slice(b": ");
                    job.body.extend_from_slice(v);
                    job.body.push(b'\n');
                }
            }
            _ => {}
        }
        self.jobs.insert(id, job);
        if work == Work::Http(Route::Echo) {
            let len = fields.get(b"content-length").map(<[u8]>::to_vec);
            let mut extra: Vec<(&[u8], &[u8])> =
                vec![(b"content-type", b"application/octet-stream")];
            if let Some(len) = &len {
                extra.push((b"content-length", len));
            }
            self.head(ctx, id, 200, &extra, false);
        }
        if end {
            self.request_end(ctx, id);
        }
    }

    pub fn on_data(&mut self, ctx: &mut Ctx<'_>, id: StreamId, data: &[u8], end: bool) {
        let Some(job) = self.jobs.get_mut(&id) else {
            self.h2.release(id, data.len());
            return;
        };
        match job.work {
            // Echoed bytes are released as they are sent: the client's window follows ours.
            Work::Http(Route::Echo) if !job.head_only => job.out.extend_from_slice(data),
            Work::Http(Route::Sink) => {
                job.sink.0 += data.len() as u64;
                job.sink.1 = job.sink.1.wrapping_add(crate::response::byte_sum(data));
                self.h2.release(id, data.len());
            }
            Work::Http(Route::Discard) => {
                job.sink.0 += data.len() as u64;
                self.h2.release(id, data.len());
            }
            Work::Grpc(_) if job.body.len() + data.len() > grpc::MAX_MESSAGE + 5 => {
                self.h2.release(id, data.len());
                return self.grpc_status(ctx, id, code::RESOURCE_EXHAUSTED, "request too large");
            }
            Work::Grpc(_) => {
                job.body.extend_from_slice(data);
                self.h2.release(id, data.len());
            }
            _ => self.h2.release(id, data.len()),
        }
        if end {
            self.request_end(ctx, id);
        }
    }

    pub fn on_trailers(&mut self, ctx: &mut Ctx<'_>, id: StreamId, fields: &Fields) {
        if let Some(job) = self.jobs.get_mut(&id) {
            if job.work == Work::Http(Route::Echo) {
                let echoed = fields
                    .iter()
                    .map(|(n, v)| (n.to_vec(), v.to_vec()))
                    .collect();
                job.finish = Finish::Trailers(echoed);
            }
        }
        self.request_end(ctx, id);
    }

    /// The request is complete: answer now or schedule the answer.
    fn request_end(&mut self, ctx: &mut Ctx<'_>, id: StreamId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let id_s = ctx.cfg.id.clone();
        match job.work {
            Work::Grpc(m) => self.grpc_end(ctx, id, m),
            Work::Http(Route::Echo) => {
                if job.finish == Finish::Open {
                    job.finish = Finish::End;
                }
            }
            Work::Http(Route::Sink) => {
                let (bytes, sum) = job.sink;
                let body = format!("{{\"bytes\":{bytes},\"sum\":{sum}}}");
                self.simple(ctx, id, 200, "application/json", body.as_bytes());
            }
            Work::Http(Route::Discard) => {
                let body = format!("{{\"bytes\":{}}}", job.sink.0);
                self.simple(ctx, id, 200, "application/json", body.as_bytes());
            }
            Work::Http(Route::Health) => self.simple(ctx, id, 200, "text/plain", b"ok\n"),
            // HTTP/1.1 upgrades only (RFC 9113 §8.6: no 101 in HTTP/2).
            Work::Http(Route::Ws | Route::UpgradeEcho) => {
                self.simple(ctx, id, 400, "text/plain", b"upgrade is HTTP/1.1 only\n")
            }
            Work::Http(Route::Flap) => {
                use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
                static FLAPS: AtomicU64 = AtomicU64::new(0);
                if FLAPS.fetch_add(1, Relaxed).is_multiple_of(2) {
                    self.simple(ctx, id, 200, "text/plain", b"ok\n")
                } else {
                    self.simple(ctx, id, 503, "text/plain", b"flap\n")
                }
            }
            Work::Http(Route::Stats) => {
                let mut buf = Vec::new();
                let _ = ctx.stats.totals().write_json(&id_s, &mut buf);
                self.simple(ctx, id, 200, "application/json", &buf);
            }
            Work::Http(Route::Headers) => {
                let body = std::mem::take(&mut job.body);
                self.simple(ctx, id, 200, "text/plain", &body);
            }
            Work::Http(Route::Status(code)) if status_has_body(code) => {
                let body = format!("status {code}\n");
                self.simple(ctx, id, code, "text/plain", body.as_bytes());
            }
            Work::Http(Route::Status(code)) => self.head(ctx, id, code, &[], true),
            Work::Http(Route::Close) => {
                let extra: [(&[u8], &[u8]); 1] = [(b"content-length", b"100")];
                self.head(ctx, id, 200, &extra, false);
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.out.extend_from_slice(b"0123456789");
                    job.finish = Finish::Reset(ErrorCode::INTERNAL_ERROR);
                }
            }
            Work::Http(Route::Garbage) => self.h2.go_away(ErrorCode::PROTOCOL_ERROR),
            Work::Http(Route::Bytes { len, chunked }) => {
                job.pattern = (!job.head_only).then_some((0, len));
                job.finish = if chunked {
                    let sum = pattern_sum(len).to_string().into_bytes();
                    Finish::Trailers(vec![(b"x-checksum".to_vec(), sum)])
                } else {
                    Finish::End
                };
                let n = len.to_string();
                let extra: [(&[u8], &[u8]); 2] = [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", n.as_bytes()),
                ];
                let empty = job.head_only || (len == 0 && !chunked);
                self.head(ctx, id, 200, &extra, empty);
            }
            Work::Http(Route::Hang) => {}
            Work::Http(Route::Default) => {
                let delay = ctx.answer_delay();
                self.schedule(ctx, id, delay);
            }
            Work::Http(Route::Delay(ms)) => self.schedule(ctx, id, Duration::from_millis(ms)),
            Work::Reset => {
                self.head(ctx, id, 200, &[(b"content-type", b"text/plain")], false);
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.out.extend_from_slice(b"partial");
                    job.finish = Finish::Reset(ErrorCode::INTERNAL_ERROR);
                }
            }
            Work::GoAway => self.simple(ctx, id, 200, "text/plain", b"goaway\n"),
            Work::Trailers => {
                self.head(ctx, id, 200, &[(b"content-type", b"text/plain")], false);
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.out.extend_from_slice(b"trailers\n");
                    job.finish = Finish::Trailers(vec![
                        (b"x-trailer".to_vec(), b"yes".to_vec()),
                        (b"x-backend".to_vec(), id_s.into_bytes()),
                    ]);
                }
            }
        }
    }

    fn schedule(&mut self, ctx: &mut Ctx<'_>, id: StreamId, delay: Duration) {
        if delay.is_zero() {
            return self.fire(ctx, id, delay);
        }
        if let Some(job) = self.jobs.get_mut(&id) {
            job.due = Some(ctx.now + delay);
            job.delay = delay;
            ctx.timers.push(ctx.now + delay, ctx.slot, self.conn_id);
        }
    }

    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        let due: Vec<StreamId> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.due.is_some_and(|t| t <= ctx.now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let job = self.jobs.get_mut(&id).expect("listed");
            job.due = None;
            // Once the head is out, a timer is the pause between streamed chunks; before
            // it, the profile delay of the answer (a stream's chunk plan is already set).
            if let Some(c) = job.chunks.as_mut().filter(|_| job.head_sent) {
                c.ready = true;
                continue;
            }
            let delay = job.delay;
            self.fire(ctx, id, delay);
        }
    }

    /// The delay is over: the default-route or TTS answer.
    fn fire(&mut self, ctx: &mut Ctx<'_>, id: StreamId, delay: Duration) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let ms = (delay.as_secs_f64() * 1000.0).round() as u64;
        let outcome = outcome(ctx);
        match job.work {
            Work::Grpc(m) => self.tts_answer(ctx, id, m, ms, outcome),
            _ => self.http_answer(ctx, id, ms, outcome),
        }
    }

    fn http_answer(&mut self, ctx: &mut Ctx<'_>, id: StreamId, ms: u64, outcome: Outcome) {
        let cfg_id = ctx.cfg.id.clone();
        let lat = ms.to_string();
        let (code, body) = match outcome {
            Outcome::Error => (
                ctx.cfg.error_status,
                format!("Error from server {cfg_id} after {ms} ms\n"),
            ),
            _ => (
                200,
                format!("Response from server {cfg_id} after {ms} ms\n"),
            ),
        };
        let size = ctx.cfg.size.filter(|_| code == 200);
        let len = size.map_or(body.len() as u64, |s| s).to_string();
        let extra: [(&[u8], &[u8]); 3] = [
            (b"content-type", b"text/plain"),
            (b"content-length", len.as_bytes()),
            (b"x-latency-ms", lat.as_bytes()),
        ];
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let cut = outcome == Outcome::CutOff;
        if !job.head_only {
            match size {
                Some(s) => job.pattern = Some((0, if cut { s / 2 } else { s })),
                None => {
                    let n = if cut { body.len() / 2 } else { body.len() };
                    job.out.extend_from_slice(&body.as_bytes()[..n]);
                }
            }
        }
        job.finish = if cut {
            Finish::Reset(ErrorCode::INTERNAL_ERROR)
        } else {
            Finish::End
        };
        let empty = job.head_only;
        self.head(ctx, id, code, &extra, empty);
    }

    fn grpc_headers(&mut self, ctx: &mut Ctx<'_>, id: StreamId, fields: &Fields, end: bool) {
        let ctype_ok = fields
            .get(b"content-type")
            .is_some_and(|c| c.starts_with(b"application/grpc"));
        if fields.method() != Some(b"POST") || !ctype_ok {
            self.jobs.insert(id, Job::new(Work::Reset, false));
            return self.simple(ctx, id, 415, "text/plain", b"gRPC requests only\n");
        }
        let Some(method) = fields.path().and_then(Method::of) else {
            return self.grpc_status(ctx, id, code::UNIMPLEMENTED, "unknown method");
        };
        if method.counted() {
            self.count(ctx);
        }
        let mut job = Job::new(Work::Grpc(method), false);
        job.echo = fields
            .iter()
            .filter(|(n, _)| n.starts_with(ECHO_PREFIX))
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        self.jobs.insert(id, job);
        if end {
            self.request_end(ctx, id);
        }
    }

    fn grpc_end(&mut self, ctx: &mut Ctx<'_>, id: StreamId, method: Method) {
        let job = self.jobs.get_mut(&id).expect("caller checked");
        let body = std::mem::take(&mut job.body);
        let msg = match grpc::unframe(&body) {
            Ok(msg) => msg,
            Err((status, why)) => return self.grpc_status(ctx, id, status, why),
        };
        let mut out = Vec::new();
        match method {
            Method::HealthCheck => {
                let Ok(req) = grpc::HealthCheckRequest::decode(msg) else {
                    return self.grpc_status(
                        ctx,
                        id,
                        code::INVALID_ARGUMENT,
                        "bad HealthCheckRequest",
                    );
                };
                if !(req.service.is_empty() || req.service == "tts.TTS") {
                    return self.grpc_status(ctx, id, code::NOT_FOUND, "unknown service");
                }
                let status = if grpc::serving() { 1 } else { 2 };
                grpc::frame_message(&grpc::HealthCheckResponse { status }, &mut out);
            }
            Method::SetServing => {
                let Ok(req) = grpc::SetServingRequest::decode(msg) else {
                    return self.grpc_status(
                        ctx,
                        id,
                        code::INVALID_ARGUMENT,
                        "bad SetServingRequest",
                    );
                };
                grpc::set_serving(req.serving);
                grpc::frame_message(
                    &grpc::SetServingResponse {
                        serving: req.serving,
                    },
                    &mut out,
                );
            }
            Method::Synthesize | Method::SynthesizeStream => {
                let Ok(req) = grpc::SynthesizeRequest::decode(msg) else {
                    return self.grpc_status(
                        ctx,
                        id,
                        code::INVALID_ARGUMENT,
                        "bad SynthesizeRequest",
                    );
                };
                if req.text.is_empty() {
                    return self.grpc_status(ctx, id, code::INVALID_ARGUMENT, "empty text");
                }
                let total = if req.chunks == 0 {
                    grpc::DEFAULT_CHUNKS
                } else {
                    req.chunks
                };
                let bytes = if req.chunk_bytes == 0 {
                    grpc::DEFAULT_CHUNK_BYTES
                } else {
                    req.chunk_bytes
                };
                if total > grpc::MAX_CHUNKS || bytes > grpc::MAX_CHUNK_BYTES {
                    return self.grpc_status(
                        ctx,
                        id,
                        code::INVALID_ARGUMENT,
                        "too much audio asked",
                    );
                }
                job.chunks = Some(Chunks {
                    next: 0,
                    total,
                    bytes: bytes as usize,
                    interval: Duration::from_millis(req.chunk_interval_ms as u64),
                    cut_at: None,
                    ready: false,
                });
                let delay = ctx.answer_delay();
                return self.schedule(ctx, id, delay);
            }
        }
        self.grpc_head(ctx, id);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.out = out;
            job.finish = App::grpc_ok(job, &ctx.cfg.id);
        }
    }

    fn tts_answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: StreamId,
        method: Method,
        ms: u64,
        outcome: Outcome,
    ) {
        if outcome == Outcome::Error {
            let code = ctx.cfg.grpc_error;
            return self.grpc_status(ctx, id, code, "injected error (--error-rate)");
        }
        self.grpc_head(ctx, id);
        let backend = ctx.cfg.id.clone();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(mut plan) = job.chunks.take() else {
            return;
        };
        if method == Method::Synthesize {
            let mut audio = Vec::new();
            grpc::audio(0, plan.bytes * plan.total as usize, &mut audio);
            let resp = grpc::SynthesizeResponse {
                audio,
                sample_rate: grpc::SAMPLE_RATE,
                backend,
                latency_ms: ms as u32,
            };
            if outcome == Outcome::CutOff {
                job.finish = Finish::Reset(ErrorCode::INTERNAL_ERROR);
            } else {
                grpc::frame_message(&resp, &mut job.out);
                job.finish = App::grpc_ok(job, &ctx.cfg.id);
            }
            return;
        }
        plan.ready = true;
        if outcome == Outcome::CutOff {
            plan.cut_at = Some(plan.total / 2);
        }
        job.chunks = Some(plan);
    }

    /// Pushes queued output of every stream into the codec; true if anything moved.
    pub fn pump(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        let mut done = Vec::new();
        for (&id, job) in self.jobs.iter_mut() {
            if !job.head_sent {
                continue;
            }
            loop {
                if job.out_pos < job.out.len() {
                    let Ok(n) = self.h2.send_data(id, &job.out[job.out_pos..], false) else {
                        done.push(id);
                        break;
                    };
                    if job.work == Work::Http(Route::Echo) {
                        self.h2.release(id, n);
                    }
                    job.out_pos += n;
                    progress |= n > 0;
                    if n == 0 {
                        break;
                    }
                    if job.out_pos == job.out.len() {
                        job.out.clear();
                        job.out_pos = 0;
                    }
                    continue;
                }
                if refill(job, ctx, self.conn_id) {
                    continue;
                }
                let open = job.chunks.as_ref().is_some_and(|c| c.next < c.total);
                if open {
                    break;
                }
                match std::mem::replace(&mut job.finish, Finish::Open) {
                    Finish::Open => break,
                    Finish::End => {
                        let _ = self.h2.send_data(id, &[], true);
                    }
                    Finish::Trailers(t) => {
                        let pairs: Vec<(&[u8], &[u8])> =
                            t.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                        let _ = self.h2.send_trailers(id, &pairs);
                    }
                    Finish::Reset(code) => self.h2.reset(id, code),
                }
                progress = true;
                done.push(id);
                break;
            }
        }
        for id in done {
            self.jobs.remove(&id);
        }
        progress
    }
}

/// Refills `job.out` from its pattern or its next audio chunk; false if nothing came.
fn refill(job: &mut Job, ctx: &mut Ctx<'_>, conn_id: u64) -> bool {
    if let Some((next, end)) = job.pattern {
        if next == end {
            job.pattern = None;
            return false;
        }
        let n = ((end - next) as usize).min(PATTERN_RUN);
        job.out.extend_from_slice(pattern(next, n));
        job.pattern = Some((next + n as u64, end));
        return true;
    }
    let Some(c) = &mut job.chunks else {
        return false;
    };
    if !c.ready || c.next >= c.total {
        return false;
    }
    if c.cut_at == Some(c.next) {
        c.next = c.total;
        job.finish = Finish::Reset(ErrorCode::INTERNAL_ERROR);
        return false;
    }
    let mut audio = Vec::with_capacity(c.bytes);
    grpc::audio(c.next as u64 * c.bytes as u64, c.bytes, &mut audio);
    let chunk = grpc::AudioChunk {
        seq: c.next,
        audio,
        last: c.next + 1 == c.total,
        backend: ctx.cfg.id.clone(),
    };
    grpc::frame_message(&chunk, &mut job.out);
    c.next += 1;
    if c.next == c.total {
        job.finish = App::grpc_ok(job, &ctx.cfg.id);
    } else if !c.interval.is_zero() {
        c.ready = false;
        job.due = Some(ctx.now + c.interval);
        ctx.timers.push(ctx.now + c.interval, ctx.slot, conn_id);
    }
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Error,
    CutOff,
}

/// `--error-rate` and `--close-rate` draws, as for HTTP/1.
fn outcome(ctx: &mut Ctx<'_>) -> Outcome {
    let (err, cut) = (ctx.cfg.error_rate, ctx.cfg.close_rate);
    if err + cut <= 0.0 {
        return Outcome::Ok;
    }
    let u = ctx.rng.next_f64();
    if u < err {
        Outcome::Error
    } else if u < err + cut {
        Outcome::CutOff
    } else {
        Outcome::Ok
    }
}
