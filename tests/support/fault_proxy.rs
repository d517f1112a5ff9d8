//! A fault-injecting HTTP/1.1 proxy for the storage fault tests: it sits between snapcrypt and
//! the real S3 server (s3s-fs) on loopback, passes requests through one at a time per
//! connection, and applies the faults a test asks for to the requests that match:
//! an error status without forwarding (500, 503), the connection closed without an answer,
//! a stall before forwarding, or the request forwarded and applied by the server and then its
//! response dropped (the connection closed instead), the fault that tests idempotence.
//!
//! Written by hand (a hundred lines of std networking) because no test proxy on crates.io
//! applies faults per request to a signed S3 conversation: the proxy must not alter a byte it
//! forwards, or SigV4 fails.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What happens to a matching request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Answered with this status and an S3 error body; the server never sees the request.
    Status(u16),
    /// The connection is closed once the request is read; no answer.
    Reset,
    /// Held this long, then forwarded (a slow server).
    Stall(Duration),
    /// Forwarded and applied by the server; its answer dropped and the connection closed.
    DropResponse,
}

/// A fault for the next `times` requests whose method is `method` (any when None) and whose
/// path contains `path` (any when empty).
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<&'static str>,
    pub path: String,
    pub fault: Fault,
    pub times: usize,
}

impl Rule {
    pub fn new(method: Option<&'static str>, path: &str, fault: Fault, times: usize) -> Self {
        Rule {
            method,
            path: path.to_string(),
            fault,
            times,
        }
    }
}

/// A request the proxy saw, and the fault applied to it (None: passed through).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub fault: Option<Fault>,
}

pub struct FaultProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().unwrap().port();
        let rules = Arc::new(Mutex::new(Vec::<Rule>::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (rules.clone(), seen.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (r, s) = (r.clone(), s.clone());
                thread::spawn(move || {
                    let _ = serve(client, upstream, &r, &s);
                });
            }
        });
        FaultProxy {
            port,
            rules,
            seen,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn inject(&self, rule: Rule) {
        self.rules.lock().unwrap().push(rule);
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests got `fault`.
    pub fn applied(&self, fault: Fault) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.fault == Some(fault))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One HTTP/1.1 message as raw bytes: head and body exactly as received.
struct Message {
    raw: Vec<u8>,
    first_line: String,
}

/// Read one message (request or response) from `r`; None at a clean end of stream.
/// `no_body`: a response to HEAD, or a status without a body.
fn read_message(
    r: &mut impl BufRead,
    is_response_to_head: bool,
) -> std::io::Result<Option<Message>> {
    let mut raw = Vec::new();
    let mut first_line = String::new();
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if first_line.is_empty() {
            first_line = text;
            continue;
        }
        if text.is_empty() {
            break;
        }
        let lower = text.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let status: Option<u16> = first_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok());
    let bodiless = is_response_to_head || matches!(status, Some(204) | Some(304));
    if bodiless {
    } else if chunked {
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line)?;
            raw.extend_from_slice(&line);
            let size_text = String::from_utf8_lossy(&line);
            let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let mut t = Vec::new();
                    r.read_until(b'\n', &mut t)?;
                    raw.extend_from_slice(&t);
                    if t == b"\r\n" || t.is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            r.read_exact(&mut chunk)?;
            raw.extend_from_slice(&chunk);
        }
    } else if let Some(n) = length {
        let start = raw.len();
        raw.resize(start + n, 0);
        r.read_exact(&mut raw[start..])?;
    } else if status.is_some() {
        // A response with neither: its body runs to the end of the connection.
        r.read_to_end(&mut raw)?;
    }
    Ok(Some(Message { raw, first_line }))
}

fn serve(
    client: TcpStream,
    upstream: u16,
    rules: &Mutex<Vec<Rule>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut from_server = BufReader::new(server.try_clone()?);
    let mut to_server = server;
    while let Some(request) = read_message(&mut from_client, false)? {
        let mut words = request.first_line.split(' ');
        let method = words.next().unwrap_or("").to_string();
        let path = words.next().unwrap_or("").to_string();
        let fault = {
            let mut rules = rules.lock().unwrap();
            let hit = rules.iter_mut().find(|r| {
                r.times > 0
                    && r.method.is_none_or(|m| m == method)
                    && path.contains(r.path.as_str())
            });
            hit.map(|r| {
                r.times -= 1;
                r.fault
            })
        };
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: path.clone(),
            fault,
        });
        match fault {
            Some(Fault::Status(code)) => {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the fault proxy</Message></Error>",
                    if code == 503 {
                        "SlowDown"
                    } else {
                        "InternalError"
                    }
                );
                write!(
                    to_client,
                    "HTTP/1.1 {code} Injected\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )?;
                to_client.flush()?;
                continue;
            }
            Some(Fault::Reset) => {
                let _ = to_client.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Stall(d)) => thread::sleep(d),
            Some(Fault::DropResponse) | None => {}
        }
        to_server.write_all(&request.raw)?;
        to_server.flush()?;
        let Some(response) = read_message(&mut from_server, method == "HEAD")? else {
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        };
        if fault == Some(Fault::DropResponse) {
            let _ = to_client.shutdown(Shutdown::Both);
            return Ok(());
        }
        to_client.write_all(&response.raw)?;
        to_client.flush()?;
    }
    Ok(())
}
