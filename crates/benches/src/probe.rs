//! Envoy's side of a convergence measurement, at a known cost.
//!
//! Polling `/clusters?format=json` costs Envoy 1-2 ms a poll (it renders
//! every host as JSON) on its main thread, the same thread that applies an
//! EDS update: the poll both delays what it measures and adds its own length
//! to it. A [`StatProbe`] instead asks for one stat (`/stats?filter=^name$`,
//! tens of microseconds) over one kept-alive connection, from a thread of
//! its own (no async runtime's timer in the way), and keeps each poll's send
//! and receive instants. A change became visible after the send of the last
//! poll that did not see it (Envoy answered that poll after it had been
//! sent) and before the receipt of the first poll that did, so the
//! [`Sighting`] is an interval whose width is printed with the figures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("Envoy admin {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("Envoy admin {addr} answered {detail}")]
    Answer { addr: SocketAddr, detail: String },
    #[error("{stat} did not reach {want} within {timeout:?} (last seen: {last:?})")]
    Timeout {
        stat: String,
        want: u64,
        timeout: Duration,
        last: Option<u64>,
    },
}

/// One stat of one Envoy, polled over a kept-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct StatProbe {
    addr: SocketAddr,
    stat: String,
    request: Vec<u8>,
    reader: BufReader<TcpStream>,
    /// Pause between two polls: Envoy's main thread is busy for one poll's
    /// service time out of every `gap` + round trip, which bounds how much
    /// the probe can delay the update it waits for.
    gap: Duration,
}

/// The interval in which a change became visible, and what it took to know.
#[derive(Debug, Clone, Copy)]
pub struct Sighting {
    /// Not visible before this: the send of the last poll that did not see
    /// it (or the instant the change began, if the first poll already did).
    pub after: Instant,
    /// Visible by this: the receipt of the first poll that saw it.
    pub by: Instant,
    pub polls: u32,
    /// The sum of the polls' round trips (send to full answer).
    pub round_trips: Duration,
}

impl Sighting {
    /// The best estimate of when it became visible: the interval's middle.
    pub fn midpoint(&self) -> Instant {
        self.after + self.half_width()
    }

    /// How far [`midpoint`](Self::midpoint) can be from the true instant.
    pub fn half_width(&self) -> Duration {
        self.by.saturating_duration_since(self.after) / 2
    }

    pub fn mean_round_trip(&self) -> Duration {
        self.round_trips / self.polls.max(1)
    }
}

impl StatProbe {
    /// Connects to Envoy's admin at `addr` for the stat named `stat`
    /// (exactly: the filter is anchored and its dots escaped).
    pub fn connect(addr: SocketAddr, stat: &str, gap: Duration) -> Result<Self, ProbeError> {
        let io = |source| ProbeError::Io { addr, source };
        let stream = TcpStream::connect(addr).map_err(io)?;
        // Requests are small and answered one at a time: no Nagle delay.
        stream.set_nodelay(true).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        let filter = format!("^{}$", stat.replace('.', "\\."));
        let request =
            format!("GET /stats?filter={filter} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
        Ok(Self {
            addr,
            stat: stat.to_owned(),
            request,
            reader: BufReader::new(stream),
            gap,
        })
    }

    /// The stat's value now (`None`: Envoy has no such stat).
    pub fn read(&mut self) -> Result<Option<u64>, ProbeError> {
        let body = self.get()?;
        Ok(stat_value(&body, &self.stat))
    }

    /// Polls until the stat equals `want`; the interval it became so in.
    /// `since` is when the change began: it cannot be visible before, so it
    /// bounds the interval if the first poll already sees it. Blocks the
    /// calling thread (run it with `spawn_blocking`).
    pub fn wait_for(
        &mut self,
        want: u64,
        since: Instant,
        timeout: Duration,
    ) -> Result<Sighting, ProbeError> {
        let started = Instant::now();
        let mut after = since;
        let mut polls = 0;
        let mut round_trips = Duration::ZERO;
        let mut last = None;
        loop {
            let sent = Instant::now();
            last = self.read()?.or(last);
            let received = Instant::now();
            polls += 1;
            round_trips += received - sent;
            if last == Some(want) {
                return Ok(Sighting {
                    after,
                    by: received,
                    polls,
                    round_trips,
                });
            }
            if received - started > timeout {
                return Err(ProbeError::Timeout {
                    stat: self.stat.clone(),
                    want,
                    timeout,
                    last,
                });
            }
            after = sent;
            std::thread::sleep(self.gap);
        }
    }

    /// One GET on the kept-alive connection; the body of a 200.
    fn get(&mut self) -> Result<String, ProbeError> {
        let addr = self.addr;
        let io = |source| ProbeError::Io { addr, source };
        let answer = |detail: String| ProbeError::Answer { addr, detail };
        self.reader.get_mut().write_all(&self.request).map_err(io)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(io)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = None;
        let mut chunked = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line).map_err(io)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| answer(format!("a Content-Length of `{value}`")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        let body = match (chunked, length) {
            (true, _) => self.read_chunked().map_err(io)?,
            (false, Some(length)) => {
                let mut body = vec![0; length];
                self.reader.read_exact(&mut body).map_err(io)?;
                body
            }
            (false, None) => {
                return Err(answer(
                    "neither a length nor chunks: the connection cannot be kept".to_owned(),
                ));
            }
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != "200" {
            return Err(answer(format!("status {status}: {body}")));
        }
        Ok(body)
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("chunk size `{}`", line.trim_end()),
                )
            })?;
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            // The CRLF after the chunk, or the empty trailer after the last.
            line.clear();
            self.reader.read_line(&mut line)?;
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// The value of `stat` in `/stats` text (`name: value` lines).
fn stat_value(body: &str, stat: &str) -> Option<u64> {
    body.lines().find_map(|line| {
        let (name, value) = line.split_once(": ")?;
        (name == stat).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// A server on one connection answering each request with the next of
    /// `answers`; it reports each request line it read.
    fn serve(answers: Vec<String>) -> (SocketAddr, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream);
            for answer in answers {
                let mut request = String::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).expect("read") == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if request.is_empty() {
                        request = line.trim_end().to_owned();
                    }
                }
                let _ = tx.send(request);
                reader
                    .get_mut()
                    .write_all(answer.as_bytes())
                    .expect("write");
            }
        });
        (addr, rx)
    }

    fn sized(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn chunked(parts: &[&str]) -> String {
        let mut answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
        for part in parts {
            answer.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
        answer.push_str("0\r\n\r\n");
        answer
    }

    #[test]
    fn polls_one_connection_until_the_stat_has_the_value_wanted() {
        let stat = "cluster.web.membership_total";
        let (addr, requests) = serve(vec![
            sized("cluster.web.membership_total: 5\n"),
            chunked(&["cluster.web.membership_", "total: 5\n"]),
            // A longer name that the anchored filter would exclude, then
            // the stat itself.
            chunked(&["cluster.web.membership_total_x: 4\ncluster.web.membership_total: 4\n"]),
        ]);
        let mut probe = StatProbe::connect(addr, stat, Duration::ZERO).expect("connect");
        let sighting = probe
            .wait_for(4, Instant::now(), Duration::from_secs(5))
            .expect("sighting");
        assert_eq!(sighting.polls, 3);
        assert!(sighting.after < sighting.by);
        assert!(sighting.midpoint() >= sighting.after && sighting.midpoint() <= sighting.by);
        let request = requests.recv().expect("a request");
        assert_eq!(
            request,
            "GET /stats?filter=^cluster\\.web\\.membership_total$ HTTP/1.1"
        );
        assert_eq!(requests.iter().count(), 2, "the same connection, kept");
    }

    #[test]
    fn a_stat_seen_on_the_first_poll_dates_from_the_change() {
        let (addr, _requests) = serve(vec![sized("cluster.web.membership_total: 4\n")]);
        let mut probe = StatProbe::connect(addr, "cluster.web.membership_total", Duration::ZERO)
            .expect("connect");
        let changed = Instant::now() - Duration::from_secs(1);
        let sighting = probe
            .wait_for(4, changed, Duration::from_secs(5))
            .expect("sighting");
        assert_eq!(sighting.polls, 1);
        assert_eq!(sighting.after, changed);
        assert!(sighting.half_width() >= Duration::from_millis(500));
    }

    #[test]
    fn an_error_status_and_a_missing_stat_are_told_apart() {
        let (addr, _requests) = serve(vec![
            sized("other.stat: 1\n"),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\ngone".to_owned(),
        ]);
        let mut probe = StatProbe::connect(addr, "cluster.web.membership_total", Duration::ZERO)
            .expect("connect");
        assert_eq!(probe.read().expect("answer"), None);
        let error = probe.read().expect_err("404");
        assert!(error.to_string().contains("status 404: gone"), "{error}");
    }
}
