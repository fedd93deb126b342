//! The Prometheus endpoint (`[metrics] listen`): a scripted sequence of grants, refusals and
//! releases, then a scrape over plain TCP read by a real parser of the text format, whose
//! counters match the script exactly, as `portctl status --json` does. Every figure is read
//! after the answers to the script's requests came back, so no waiting is needed.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use portbroker::{Error, Refusal, SocketSpec};
use prometheus_parse::{Scrape, Value};
use support::{free_port, loopback_any, Daemon};

/// One HTTP/1.0 request; the status line and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap().to_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, body.to_owned())
}

/// The scrape's plain samples (counters, gauges, and a histogram's `_sum` and `_count`) by
/// name and labels, and its histograms' buckets by name.
struct Figures {
    plain: HashMap<String, f64>,
    buckets: HashMap<String, Vec<(f64, f64)>>,
    types: HashMap<String, &'static str>,
}

impl Figures {
    fn parse(text: &str) -> Figures {
        let lines = BufReader::new(text.as_bytes()).lines();
        let scrape = Scrape::parse(lines).expect("a valid Prometheus text exposition");
        let mut figures = Figures {
            plain: HashMap::new(),
            buckets: HashMap::new(),
            types: HashMap::new(),
        };
        for sample in scrape.samples {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                sample.metric.clone()
            } else {
                format!("{}{{{}}}", sample.metric, labels.join(","))
            };
            let (kind, value) = match sample.value {
                Value::Counter(v) => ("counter", v),
                Value::Gauge(v) => ("gauge", v),
                Value::Untyped(v) => ("untyped", v),
                Value::Histogram(buckets) => {
                    let buckets = buckets.iter().map(|b| (b.less_than, b.count)).collect();
                    figures.buckets.insert(key.clone(), buckets);
                    figures.types.insert(key, "histogram");
                    continue;
                }
                Value::Summary(_) => panic!("no summaries expected: {key}"),
            };
            assert!(
                figures.plain.insert(key.clone(), value).is_none(),
                "{key} twice"
            );
            figures.types.insert(key, kind);
        }
        figures
    }

    fn get(&self, key: &str) -> u64 {
        let value = *self
            .plain
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:?}", self.plain));
        assert_eq!(value.fract(), 0.0, "{key} is a whole number");
        value as u64
    }

    fn kind(&self, key: &str) -> &str {
        self.types[key]
    }
}

const REASONS: [&str; 8] = [
    "in_use",
    "in_use_outside",
    "not_permitted",
    "invalid_spec",
    "pool_exhausted",
    "bind_failed",
    "quota_exceeded",
    "unknown_service",
];

fn refused(result: Result<portbroker::Lease, Error>) -> Refusal {
    match result {
        Err(Error::Refused(refusal)) => refusal,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(lease) => panic!("expected a refusal, got lease {}", lease.id()),
    }
}

#[test]
fn the_endpoint_counts_what_the_script_did() {
    let port = free_port();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // The endpoint's own lease is one of the four the table may hold.
    let policy = format!("[metrics]\nlisten = \"{listen}\"\n\n[limits]\nleases_total = 4\n");
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    let broker = daemon.broker();

    // The endpoint's port is a lease of the daemon's own, which `list` shows.
    let own = broker
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.sockets.iter().any(|s| s.addr == listen))
        .expect("the endpoint's lease is listed");
    assert_eq!(own.holder.pid, daemon.pid() as i32, "held by the daemon");

    // The script: 3 grants, 3 refusals (2 in use, 1 quota), 2 releases.
    let a = broker.lease([loopback_any()]).unwrap();
    let b = broker.lease([loopback_any()]).unwrap();
    let in_use = SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), a.local_addr().port());
    assert!(matches!(
        refused(broker.lease([in_use])),
        Refusal::InUse { .. }
    ));
    // Nobody else may lease the endpoint's port.
    let endpoint = SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), port);
    match refused(broker.lease([endpoint])) {
        Refusal::InUse { lease, .. } => assert_eq!(lease, own.id),
        other => panic!("expected InUse, got {other}"),
    }
    let c = broker.lease([loopback_any()]).unwrap();
    assert!(matches!(
        refused(broker.lease([loopback_any()])),
        Refusal::QuotaExceeded { .. }
    ));
    a.release().unwrap();
    b.release().unwrap();

    let (status, body) = http_get(listen, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    let figures = Figures::parse(&body);
    assert_eq!(figures.get("portbroker_grants_total"), 3);
    assert_eq!(figures.kind("portbroker_grants_total"), "counter");
    for reason in REASONS {
        let key = format!("portbroker_refusals_total{{reason={reason}}}");
        let expected = match reason {
            "in_use" => 2,
            "quota_exceeded" => 1,
            _ => 0,
        };
        assert_eq!(figures.get(&key), expected, "{key}");
        assert_eq!(figures.kind(&key), "counter");
    }
    assert_eq!(figures.get("portbroker_releases_total"), 2);
    assert_eq!(figures.get("portbroker_expiries_total"), 0);
    assert_eq!(figures.get("portbroker_revokes_total"), 0);
    // c and the endpoint's own lease.
    assert_eq!(figures.get("portbroker_leases"), 2);
    assert_eq!(figures.kind("portbroker_leases"), "gauge");
    assert_eq!(figures.get("portbroker_leased_sockets"), 2);
    assert_eq!(figures.get("portbroker_lingering_leases"), 0);
    assert_eq!(
        figures.get("portbroker_pool_ports_in_use{transport=tcp}"),
        1
    );
    assert_eq!(
        figures.get("portbroker_pool_ports_in_use{transport=udp}"),
        0
    );
    let pool_size = u64::from(daemon.pool.1 - daemon.pool.0 + 1);
    assert_eq!(figures.get("portbroker_pool_size"), pool_size);
    assert_eq!(figures.get("portbroker_connections"), 1);
    // Every Lease request was timed: 3 grants and 3 refusals.
    let latency = "portbroker_lease_latency_microseconds";
    assert_eq!(figures.kind(latency), "histogram");
    let buckets = &figures.buckets[latency];
    let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
    assert_eq!(
        bounds,
        [
            10.,
            25.,
            50.,
            100.,
            250.,
            500.,
            1000.,
            2500.,
            5000.,
            f64::INFINITY
        ]
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap().1, 6.0);
    assert_eq!(figures.get(&format!("{latency}_count")), 6);
    let sum = figures.get(&format!("{latency}_sum"));

    // `portctl status --json` shows the same figures (its own connection is one more).
    let out = daemon
        .portctl()
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &json["metrics"];
    assert_eq!(m["grants"], 3);
    for reason in REASONS {
        assert_eq!(
            m["refusals"][reason],
            figures.get(&format!("portbroker_refusals_total{{reason={reason}}}")),
            "{reason}"
        );
    }
    assert_eq!(
        (&m["releases"], &m["expiries"], &m["revokes"]),
        (&2.into(), &0.into(), &0.into())
    );
    assert_eq!((&json["leases"], &json["sockets"]), (&2.into(), &2.into()));
    assert_eq!(json["connections"], 2);
    assert_eq!(m["lingering"], 0);
    assert_eq!(m["pool_in_use"], serde_json::json!({"tcp": 1, "udp": 0}));
    assert_eq!(m["pool_size"], pool_size);
    assert_eq!(m["lease_latency_us"]["count"], 6);
    assert_eq!(m["lease_latency_us"]["sum"], sum);
    let json_buckets: Vec<u64> = m["lease_latency_us"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .collect();
    let scraped: Vec<u64> = buckets.iter().map(|b| b.1 as u64).collect();
    assert_eq!(json_buckets, scraped);
    assert_eq!(m["listen"], listen.to_string());
    drop(c);

    // Anything but GET /metrics is not found.
    for path in ["/", "/metrics/x", "/favicon.ico"] {
        let (status, _) = http_get(listen, path);
        assert_eq!(status, "HTTP/1.0 404 Not Found", "{path}");
    }
}

#[test]
fn a_non_loopback_address_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portbroker.toml");
    std::fs::write(&config, "[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
    let out = std::process::Command::new(support::portbrokerd_bin())
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("p.sock"))
        .env_remove("PORTBROKER_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[metrics] listen") && stderr.contains("not a loopback address"),
        "{stderr}"
    );
}

#[test]
fn the_endpoint_lease_is_the_daemon_s_own_until_an_administrator_revokes_it() {
    let port = free_port();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let policy = format!("[metrics]\nlisten = \"{listen}\"\n");
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    let broker = daemon.broker();
    let own = broker
        .list()
        .unwrap()
        .into_iter()
        .find(|l| l.sockets.iter().any(|s| s.addr == listen))
        .expect("the endpoint's lease is listed");
    // Not even root releases or renews it: it is no client's.
    match broker.release(own.id) {
        Err(Error::Failed(portbroker::Failure::NotPermitted { reason })) => {
            assert!(reason.contains("metrics endpoint"), "{reason}")
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
    assert!(broker.renew(own.id, Duration::from_secs(1)).is_err());
    let (status, _) = http_get(listen, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    // An administrator's revoke shuts the listener down: the endpoint stops, the port is free.
    broker.revoke(own.id).unwrap();
    assert!(TcpStream::connect(listen).is_err(), "the endpoint stopped");
    assert!(broker.list().unwrap().iter().all(|l| l.id != own.id));
    let status = broker.status().unwrap();
    assert_eq!(status.metrics.revokes, 1);
    assert_eq!(status.metrics.releases, 0);
}

#[test]
fn a_restarted_daemon_serves_its_endpoint_again() {
    let port = free_port();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let policy = format!("[metrics]\nlisten = \"{listen}\"\n");
    let mut daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    let kept = daemon.broker().lease([loopback_any()]).unwrap();
    // The journal remembers the endpoint's lease as any other; killed, the daemon holds nothing.
    daemon.kill9();
    let config = daemon.policy_file();
    let restarted = Daemon::start_with(&[
        "--socket",
        daemon.socket.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    // A served request first: the daemon's socket accepts (into its backlog) before start-up
    // has opened the endpoint, and answers only once start-up is done.
    let leases = restarted.broker().list().unwrap();
    let (status, body) = http_get(listen, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
    let own: Vec<_> = leases
        .iter()
        .filter(|l| l.sockets.iter().any(|s| s.addr == listen))
        .collect();
    assert_eq!(own.len(), 1, "{leases:?}");
    assert_eq!(own[0].holder.pid, restarted.pid() as i32);
    drop(kept);
}

#[test]
fn silent_scrapes_are_bounded_and_closed_at_their_deadline_then_the_endpoint_serves_again() {
    const MAX_SCRAPES: usize = 8;
    const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
    let port = free_port();
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let policy = format!("[metrics]\nlisten = \"{listen}\"\n");
    let daemon = Daemon::start_for_all_users(Some(&policy), &[]);
    // A served request first: the endpoint opens during start-up.
    daemon.broker().status().unwrap();
    assert_eq!(http_get(listen, "/metrics").0, "HTTP/1.0 200 OK");

    // Connections that never ask: the endpoint keeps as many as it allows, each until its
    // deadline, and closes one more at once (the backlog is accepted in order).
    let connected = std::time::Instant::now();
    let silent: Vec<TcpStream> = (0..MAX_SCRAPES)
        .map(|_| TcpStream::connect(listen).unwrap())
        .collect();
    let mut one_more = TcpStream::connect(listen).unwrap();
    one_more
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        one_more.read(&mut [0; 1]).unwrap(),
        0,
        "the connection past the limit is closed"
    );
    assert!(
        connected.elapsed() < SCRAPE_DEADLINE,
        "the connection past the limit was kept until a deadline instead of closed at once"
    );
    for mut stream in silent {
        stream.set_read_timeout(Some(SCRAPE_DEADLINE * 3)).unwrap();
        assert_eq!(
            stream.read(&mut [0; 1]).unwrap(),
            0,
            "closed at its deadline"
        );
        // Not before: the deadline counts from the accept, which came after the connect.
        assert!(connected.elapsed() >= SCRAPE_DEADLINE, "closed early");
    }
    assert_eq!(http_get(listen, "/metrics").0, "HTTP/1.0 200 OK");
}
