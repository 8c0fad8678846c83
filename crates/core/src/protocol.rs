//! The websocket wire protocol: JSON text frames between clients and gateways.
//!
//! Parsing never panics and never closes the connection: every way a frame
//! can be wrong maps to an [`ErrorCode`] and a message a person can act on.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ErrorCode;
use crate::model::{CrawlResult, PageFacts};

/// Longest client-chosen job id.
pub const MAX_JOB_ID_LEN: usize = 128;

/// Limits the gateway enforces while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: u32,
    pub max_pages: u32,
    pub default_pages: u32,
}

/// A submit request, validated for shape; the URL is still raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    pub job_id: String,
    pub url: String,
    pub depth: u32,
    pub allowed_hosts: Vec<String>,
    pub include_subdomains: bool,
    pub max_pages: u32,
    pub spider: Option<String>,
    /// robots.txt is asked before each page (true unless the client says).
    pub respect_robots: bool,
    /// The fetched responses are kept as WARC records by the workers.
    pub warc: bool,
}

/// A submit as a client writes it: what [`parse_client_message`] reads back
/// as a [`ClientMessage::Submit`] (optional fields left out are the
/// gateway's defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "submit", rename_all = "camelCase")]
pub struct SubmitRequest {
    pub job_id: String,
    pub url: String,
    pub depth: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_subdomains: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spider: Option<String>,
    /// Left out when true, the gateway's default.
    #[serde(skip_serializing_if = "is_true")]
    pub respect_robots: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warc: bool,
}

/// A `status` request as a client writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "status", rename_all = "camelCase")]
pub struct StatusRequest {
    pub job_id: String,
}

impl SubmitRequest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests always serialise")
    }
}

impl StatusRequest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests always serialise")
    }
}

/// An `auth` message as a client writes it: how a browser, which cannot
/// set an `Authorization` header on a websocket, presents its token.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "auth")]
pub struct AuthRequest {
    pub token: String,
}

impl AuthRequest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("requests always serialise")
    }
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthRequest { token: … }")
    }
}

/// Longest token an `auth` message may carry; real ones are 70 characters.
pub const MAX_TOKEN_LEN: usize = 256;

#[derive(Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Submit(Submit),
    Status {
        job_id: String,
    },
    /// A token for this connection; never printed.
    Auth {
        token: String,
    },
}

impl std::fmt::Debug for ClientMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Submit(submit) => f.debug_tuple("Submit").field(submit).finish(),
            Self::Status { job_id } => f.debug_struct("Status").field("job_id", job_id).finish(),
            Self::Auth { .. } => f.write_str("Auth { token: … }"),
        }
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The job id, when the frame carried a readable one.
    pub job_id: Option<String>,
}

impl ProtocolError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            job_id: None,
        }
    }
}

/// Parses one text frame.
pub fn parse_client_message(text: &str, limits: &Limits) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            ErrorCode::InvalidJson,
            format!("frame is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidMessage,
            "a message must be a JSON object",
        ));
    };
    let job_id = obj.get("jobId").and_then(Value::as_str).map(str::to_owned);
    let with_job = |mut e: ProtocolError| {
        e.job_id.clone_from(&job_id);
        e
    };
    match obj.get("type") {
        None if obj.contains_key("urlToCrawl") => {
            parse_submit(&obj, limits, Legacy::Yes).map_err(with_job)
        }
        None => Err(with_job(ProtocolError::new(
            ErrorCode::MissingField,
            "field `type` is required (\"submit\", \"status\" or \"auth\")",
        ))),
        Some(Value::String(t)) if t == "submit" => {
            parse_submit(&obj, limits, Legacy::No).map_err(with_job)
        }
        Some(Value::String(t)) if t == "status" => Ok(ClientMessage::Status {
            job_id: required_job_id(&obj).map_err(with_job)?,
        }),
        Some(Value::String(t)) if t == "auth" => match obj.get("token") {
            Some(Value::String(token)) if (1..=MAX_TOKEN_LEN).contains(&token.len()) => {
                Ok(ClientMessage::Auth {
                    token: token.clone(),
                })
            }
            None => Err(missing("token")),
            Some(_) => Err(wrong_type(
                "token",
                &format!("a string of 1 to {MAX_TOKEN_LEN} characters"),
            )),
        },
        Some(Value::String(t)) => Err(with_job(ProtocolError::new(
            ErrorCode::UnknownType,
            format!("unknown message type `{t:.64}`; expected \"submit\", \"status\" or \"auth\""),
        ))),
        Some(_) => Err(with_job(ProtocolError::new(
            ErrorCode::InvalidField,
            "field `type` must be a string",
        ))),
    }
}

#[derive(PartialEq)]
enum Legacy {
    Yes,
    No,
}

fn parse_submit(
    obj: &Map<String, Value>,
    limits: &Limits,
    legacy: Legacy,
) -> Result<ClientMessage, ProtocolError> {
    let (url_field, depth_field) = match legacy {
        Legacy::Yes => ("urlToCrawl", "depthToCrawl"),
        Legacy::No => ("url", "depth"),
    };
    let job_id = required_job_id(obj)?;
    let url = match obj.get(url_field) {
        None => return Err(missing(url_field)),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(wrong_type(url_field, "a string")),
    };
    let depth = match obj.get(depth_field) {
        None => return Err(missing(depth_field)),
        Some(Value::Number(n)) => parse_depth(n, depth_field, limits)?,
        Some(_) => {
            return Err(ProtocolError::new(
                ErrorCode::InvalidDepth,
                format!(
                    "`{depth_field}` must be an integer from 0 to {}",
                    limits.max_depth
                ),
            ));
        }
    };
    let allowed_hosts = match obj.get("allowedHosts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|h| !h.is_empty() && h.len() <= 253 && !h.contains(['/', ':', ' ']))
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| wrong_type("allowedHosts", "an array of host names"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("allowedHosts", "an array of host names")),
    };
    let include_subdomains = optional_bool(obj, "includeSubdomains", false)?;
    let max_pages = match obj.get("maxPages") {
        None | Some(Value::Null) => limits.default_pages.min(limits.max_pages),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p) if p >= 1 && p <= u64::from(limits.max_pages) => p as u32,
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidField,
                    format!(
                        "`maxPages` must be an integer from 1 to {}",
                        limits.max_pages
                    ),
                ));
            }
        },
        Some(_) => return Err(wrong_type("maxPages", "an integer")),
    };
    let spider = match obj.get("spider") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_spider_name(s) => Some(s.clone()),
        Some(_) => {
            return Err(wrong_type(
                "spider",
                "a spider name of letters, digits, `-` and `_` (at most 64)",
            ));
        }
    };
    let respect_robots = optional_bool(obj, "respectRobots", true)?;
    let warc = optional_bool(obj, "warc", false)?;
    Ok(ClientMessage::Submit(Submit {
        job_id,
        url,
        depth,
        allowed_hosts,
        include_subdomains,
        max_pages,
        spider,
        respect_robots,
        warc,
    }))
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Spider names become folder names, so only a safe alphabet is accepted:
/// 1 to 64 ASCII letters, digits, `-` or `_`. File-sync applies the same rule
/// to the spiders it stores.
pub fn is_spider_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_depth(n: &serde_json::Number, field: &str, limits: &Limits) -> Result<u32, ProtocolError> {
    match n.as_i64() {
        Some(d) if d >= 0 && d <= i64::from(limits.max_depth) => Ok(d as u32),
        Some(d) if d < 0 => Err(ProtocolError::new(
            ErrorCode::InvalidDepth,
            format!("`{field}` is {d}; it must be 0 or more"),
        )),
        Some(d) => Err(ProtocolError::new(
            ErrorCode::InvalidDepth,
            format!(
                "`{field}` is {d}; this server's maximum is {}",
                limits.max_depth
            ),
        )),
        None => Err(ProtocolError::new(
            ErrorCode::InvalidDepth,
            format!(
                "`{field}` must be an integer from 0 to {}",
                limits.max_depth
            ),
        )),
    }
}

fn required_job_id(obj: &Map<String, Value>) -> Result<String, ProtocolError> {
    match obj.get("jobId") {
        None => Err(missing("jobId")),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= MAX_JOB_ID_LEN && !s.chars().any(char::is_control) =>
        {
            Ok(s.clone())
        }
        Some(Value::String(_)) => Err(ProtocolError::new(
            ErrorCode::InvalidField,
            format!("`jobId` must be 1 to {MAX_JOB_ID_LEN} printable characters"),
        )),
        Some(_) => Err(wrong_type("jobId", "a string")),
    }
}

fn missing(field: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::MissingField,
        format!("field `{field}` is required"),
    )
}

/// A boolean field that may be left out (or null) for `default`.
fn optional_bool(
    obj: &Map<String, Value>,
    field: &str,
    default: bool,
) -> Result<bool, ProtocolError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(wrong_type(field, "a boolean")),
    }
}

fn wrong_type(field: &str, expected: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::InvalidField,
        format!("field `{field}` must be {expected}"),
    )
}

/// Messages from the gateway to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    /// Sent once when the connection opens: the id under which this client's
    /// jobs are kept. Reconnect with `?clientId=` to ask about them later.
    #[serde(rename_all = "camelCase")]
    Welcome { client_id: String, gateway: String },
    /// The connection's token was accepted: its jobs are the tenant's.
    Authenticated { tenant: String },
    #[serde(rename_all = "camelCase")]
    Accepted {
        job_id: String,
        url: String,
        depth: u32,
    },
    #[serde(rename_all = "camelCase")]
    Progress {
        job_id: String,
        pages_done: u32,
        current_depth: u32,
    },
    #[serde(rename_all = "camelCase")]
    Result {
        job_id: String,
        url: String,
        depth: u32,
        levels: Vec<Vec<String>>,
        pages: Vec<PageFacts>,
        truncated: bool,
        cached: bool,
        elapsed_ms: u64,
    },
    /// The start of a result too large for one message (more bytes than
    /// the gateway puts in one): its shape, then [`Self::ResultPart`]s,
    /// the last marked `last`, whose pages come in level order (depth,
    /// then URL), so level `i` is the URLs of the pages of depth `i`, in
    /// the order they arrive.
    #[serde(rename_all = "camelCase")]
    ResultHead {
        job_id: String,
        url: String,
        depth: u32,
        level_sizes: Vec<u32>,
        page_count: u64,
        truncated: bool,
        cached: bool,
        elapsed_ms: u64,
    },
    /// Part `part` (from 1) of a result announced by a head. Parts are cut
    /// by size, so their number is known only at the `last`.
    #[serde(rename_all = "camelCase")]
    ResultPart {
        job_id: String,
        part: u32,
        last: bool,
        pages: Vec<PageFacts>,
    },
    /// Answer to `status` for a job that has not finished.
    #[serde(rename_all = "camelCase")]
    Status {
        job_id: String,
        state: String,
        pages_done: u32,
        current_depth: u32,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        code: ErrorCode,
        message: String,
    },
}

impl ServerMessage {
    pub fn result(
        job_id: String,
        url: String,
        result: CrawlResult,
        cached: bool,
        elapsed_ms: u64,
    ) -> Self {
        Self::Result {
            job_id,
            url,
            depth: result.depth,
            levels: result.levels,
            pages: result.pages,
            truncated: result.truncated,
            cached,
            elapsed_ms,
        }
    }

    pub fn error(job_id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            job_id,
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

/// Puts a result sent in parts back together, for clients.
#[derive(Debug)]
pub struct ResultAssembler {
    head: ServerMessage,
    pages: Vec<PageFacts>,
    parts_seen: u32,
}

/// What [`ResultAssembler::add`] made of a part.
#[derive(Debug, PartialEq)]
pub enum Assembled {
    /// More parts to come.
    Pending,
    /// The whole result, as one [`ServerMessage::Result`].
    Done(ServerMessage),
}

impl ResultAssembler {
    /// Starts from a [`ServerMessage::ResultHead`]; `None` for any other message.
    pub fn new(head: ServerMessage) -> Option<Self> {
        let ServerMessage::ResultHead { page_count, .. } = &head else {
            return None;
        };
        let capacity = usize::try_from(*page_count).unwrap_or(0).min(1 << 20);
        Some(Self {
            head,
            pages: Vec::with_capacity(capacity),
            parts_seen: 0,
        })
    }

    /// Adds the next part. Parts arrive in order on one connection; one out
    /// of order is refused, and so is a last part that leaves the result
    /// short of, or past, the head's page count.
    pub fn add(
        &mut self,
        part: u32,
        last: bool,
        pages: Vec<PageFacts>,
    ) -> Result<Assembled, String> {
        let ServerMessage::ResultHead {
            job_id,
            url,
            depth,
            level_sizes,
            page_count,
            truncated,
            cached,
            elapsed_ms,
        } = &self.head
        else {
            unreachable!("an assembler starts from a head");
        };
        if part != self.parts_seen + 1 {
            return Err(format!(
                "part {part} of job `{job_id}` arrived after part {}",
                self.parts_seen
            ));
        }
        self.parts_seen = part;
        self.pages.extend(pages);
        if !last {
            return Ok(Assembled::Pending);
        }
        if self.pages.len() as u64 != *page_count {
            return Err(format!(
                "the result of job `{job_id}` came with {} pages; its head said {page_count}",
                self.pages.len()
            ));
        }
        let summary = crate::model::ResultSummary {
            depth: *depth,
            truncated: *truncated,
            level_sizes: level_sizes.clone(),
        };
        let result = CrawlResult::assemble(&summary, std::mem::take(&mut self.pages));
        Ok(Assembled::Done(ServerMessage::result(
            job_id.clone(),
            url.clone(),
            result,
            *cached,
            *elapsed_ms,
        )))
    }
}

impl From<ProtocolError> for ServerMessage {
    fn from(e: ProtocolError) -> Self {
        Self::error(e.job_id, e.code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_depth: 5,
        max_pages: 1000,
        default_pages: 200,
    };

    fn parse(s: &str) -> Result<ClientMessage, ProtocolError> {
        parse_client_message(s, &LIMITS)
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).unwrap_err().code
    }

    #[test]
    fn both_submit_forms_parse_to_the_same_request() {
        let modern =
            parse(r#"{"type":"submit","jobId":"J1","url":"https://a.example/","depth":2}"#)
                .unwrap();
        let legacy =
            parse(r#"{"jobId":"J1","urlToCrawl":"https://a.example/","depthToCrawl":2}"#).unwrap();
        assert_eq!(modern, legacy);
        let ClientMessage::Submit(s) = modern else {
            panic!("not a submit")
        };
        assert_eq!((s.job_id.as_str(), s.depth, s.max_pages), ("J1", 2, 200));
    }

    #[test]
    fn options_widen_scope_and_cap_pages() {
        let msg = parse(
            r#"{"type":"submit","jobId":"J","url":"http://a/","depth":0,"allowedHosts":["B.example"],"includeSubdomains":true,"maxPages":7}"#,
        )
        .unwrap();
        let ClientMessage::Submit(s) = msg else {
            panic!("not a submit")
        };
        assert_eq!(s.allowed_hosts, vec!["b.example"]);
        assert!(s.include_subdomains);
        assert_eq!(s.max_pages, 7);
    }

    #[test]
    fn a_typed_request_reads_back_as_what_it_says() {
        let request = SubmitRequest {
            job_id: "J".into(),
            url: "http://a/".into(),
            depth: 2,
            max_pages: Some(7),
            allowed_hosts: vec!["b.example".into()],
            include_subdomains: true,
            spider: Some("news".into()),
            respect_robots: false,
            warc: true,
        };
        let ClientMessage::Submit(parsed) = parse(&request.to_json()).unwrap() else {
            panic!("not a submit");
        };
        assert_eq!(
            parsed,
            Submit {
                job_id: "J".into(),
                url: "http://a/".into(),
                depth: 2,
                allowed_hosts: vec!["b.example".into()],
                include_subdomains: true,
                max_pages: 7,
                spider: Some("news".into()),
                respect_robots: false,
                warc: true,
            }
        );
        let bare = SubmitRequest {
            max_pages: None,
            allowed_hosts: Vec::new(),
            include_subdomains: false,
            spider: None,
            respect_robots: true,
            warc: false,
            ..request
        };
        assert_eq!(
            bare.to_json(),
            r#"{"type":"submit","jobId":"J","url":"http://a/","depth":2}"#
        );
        let status = StatusRequest { job_id: "J".into() };
        assert_eq!(
            parse(&status.to_json()).unwrap(),
            ClientMessage::Status { job_id: "J".into() }
        );
    }

    #[test]
    fn status_parses() {
        assert_eq!(
            parse(r#"{"type":"status","jobId":"J9"}"#).unwrap(),
            ClientMessage::Status {
                job_id: "J9".into()
            }
        );
    }

    #[test]
    fn every_kind_of_bad_frame_has_its_own_code() {
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidMessage);
        assert_eq!(
            code(r#"{"type":"dance","jobId":"J"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(code(r#"{"jobId":"J"}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"type":"submit","url":"http://a/","depth":1}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","depth":1}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":7,"url":"http://a/","depth":1}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":5,"depth":1}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/","depth":"2"}"#),
            ErrorCode::InvalidDepth
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/","depth":-1}"#),
            ErrorCode::InvalidDepth
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/","depth":1.5}"#),
            ErrorCode::InvalidDepth
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/","depth":6}"#),
            ErrorCode::InvalidDepth
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/","depth":1,"maxPages":0}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"J","url":"http://a/","depth":1,"spider":"../x"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"submit","jobId":"","url":"http://a/","depth":1}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidField);
    }

    #[test]
    fn errors_carry_the_job_id_when_readable() {
        let err =
            parse(r#"{"type":"submit","jobId":"J7","url":"http://a/","depth":-1}"#).unwrap_err();
        assert_eq!(err.job_id.as_deref(), Some("J7"));
    }

    #[test]
    fn a_result_in_parts_is_put_back_together() {
        let page = |url: &str, depth| PageFacts {
            url: url.into(),
            depth,
            ..Default::default()
        };
        let head = ServerMessage::ResultHead {
            job_id: "J".into(),
            url: "a".into(),
            depth: 1,
            level_sizes: vec![1, 2],
            page_count: 3,
            truncated: false,
            cached: false,
            elapsed_ms: 5,
        };
        let mut short = ResultAssembler::new(head.clone()).unwrap();
        assert!(
            short.add(1, true, vec![page("a", 0)]).is_err(),
            "a last part that leaves the result short"
        );
        let mut parts = ResultAssembler::new(head).unwrap();
        assert!(parts.add(2, false, vec![]).is_err(), "out of order");
        assert_eq!(
            parts.add(1, false, vec![page("a", 0), page("b", 1)]),
            Ok(Assembled::Pending)
        );
        let Ok(Assembled::Done(ServerMessage::Result { levels, pages, .. })) =
            parts.add(2, true, vec![page("c", 1)])
        else {
            panic!("the last part completes the result");
        };
        assert_eq!(
            levels,
            [vec!["a".to_string()], vec!["b".into(), "c".into()]]
        );
        assert_eq!(pages.len(), 3);
        assert!(
            ResultAssembler::new(ServerMessage::error(None, ErrorCode::Internal, "x")).is_none()
        );
    }

    #[test]
    fn server_messages_use_camel_case_and_a_type_tag() {
        let json = ServerMessage::error(Some("J".into()), ErrorCode::InvalidUrl, "bad").to_json();
        assert_eq!(
            json,
            r#"{"type":"error","jobId":"J","code":"invalid_url","message":"bad"}"#
        );
        let json = ServerMessage::Progress {
            job_id: "J".into(),
            pages_done: 3,
            current_depth: 1,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"progress","jobId":"J","pagesDone":3,"currentDepth":1}"#
        );
    }
}
