//! `make bench`: load on loopback against realtime and, in the same run, the
//! peer (a Node.js `ws` server fed by LISTEN/NOTIFY); prints a table and
//! writes BENCHMARKS.md and a latency plot. Every loop is bounded in count
//! and time.
//!
//! realtime-bench [--quick] [--only 3,7] --pg-port P --realtime-port R --peer-port Q --peer-pid N --out DIR
//!
//! With `--only`, BENCHMARKS.md is not written (the figures are printed).

mod client;
mod nodes;
mod report;

use client::{Recorder, Sink, broadcast_frame, connect, join, now_us, send, spawn_reader};
use futures_util::StreamExt;
use report::{Figure, Report};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

#[derive(Clone)]
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
}

impl Target {
    fn url(&self, key: &str) -> String {
        format!("ws://127.0.0.1:{}/realtime/v1/websocket?apikey={key}&vsn=2.0.0", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }
}

struct Bench {
    quick: bool,
    pg_port: String,
    realtime: Target,
    peer: Target,
    report: Report,
}

/// Open sockets of a scenario; dropping them closes every one.
#[derive(Default)]
struct Sockets {
    sinks: Vec<Sink>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Sockets {
    fn add(&mut self, ws: client::Ws, rec: &Recorder) {
        let (sink, stream) = ws.split();
        self.readers.push(spawn_reader(stream, rec.clone()));
        self.sinks.push(sink);
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

fn jwt(role: &str, sub: &str) -> String {
    let claims = json!({"role": role, "sub": sub, "exp": now_us() / 1_000_000 + 3600});
    jsonwebtoken::encode(&Default::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

/// A loopback source address per connection, round robin over 250 of them:
/// one address's port range would run out (sockets closed by earlier
/// scenarios linger in TIME_WAIT).
fn source() -> IpAddr {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2 + (n % 250) as u8))
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// CPU seconds of the processes this one waited for (pgbench).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// CPU seconds another process (the worker, the peer) has used so far.
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// One target's run at one insert rate.
struct DatabaseRun {
    achieved: f64,
    delivered: u64,
    expected: u64,
    complete: bool,
    server_cpu: f64,
    loadgen_cpu: f64,
    latency: Recorder,
}

fn database_figure(name: &str, runs: &[DatabaseRun]) -> Figure {
    let describe = |r: &DatabaseRun| {
        let (p50, p95, p99) = r.latency.percentiles();
        let missing =
            if r.complete { String::new() } else { format!(", **{}/{} delivered**", r.delivered, r.expected) };
        format!("{p50:.2} / {p95:.2} / {p99:.2} ms at {:.0}/s{missing}", r.achieved)
    };
    let (ours, peer) = (&runs[0], &runs[1]);
    let p99 = |r: &DatabaseRun| r.latency.percentiles().2;
    Figure::text(name, &describe(ours), "46 / 132 / 159 ms at 10,000/s", ours.loadgen_cpu.max(peer.loadgen_cpu))
        .with_peer(&describe(peer), p99(peer) / p99(ours).max(0.001))
        .with_server_cpu(ours.server_cpu, Some(peer.server_cpu))
        .with_plot(name.trim_start_matches("3. database → 100 subscribers at "), &ours.latency, Some(&peer.latency))
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// 50,000 sockets need more descriptors than the usual limits: root may
/// raise the hard limit too; anyone may raise the soft one to the hard one.
fn raise_fd_limit() {
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        let wanted = libc::rlimit { rlim_cur: 200_000, rlim_max: 200_000 };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
            let mut l: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

impl Bench {
    fn psql(&self, sql: &str) -> String {
        self.psql_at(&self.pg_port, sql)
    }

    fn psql_at(&self, port: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed: {}\n{sql}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Opens `n` sockets joined to `topic`, each read by a task feeding `rec`.
    async fn subscribers(
        &self,
        t: &Target,
        n: usize,
        topic: &str,
        config: serde_json::Value,
        key: &str,
        rec: &Recorder,
    ) -> Sockets {
        let mut sockets = Sockets::default();
        for i in 0..n {
            let mut ws = match connect(&t.url(key), t.addr(), source()).await {
                Ok(ws) => ws,
                Err(e) => panic!("{}: connection {i} failed: {e}", t.name),
            };
            let status = join(&mut ws, topic, config.clone(), None).await;
            assert_eq!(status, "ok", "{}: join {i} of {topic}", t.name);
            sockets.add(ws, rec);
        }
        sockets
    }

    /// Scenario 1 (and 4): one sender, `receivers` on one channel. Returns
    /// (deliveries/s, latencies, load generator CPU %, server CPU %, expected).
    async fn fan_out(
        &self,
        t: &Target,
        receivers: usize,
        payload: usize,
        messages: usize,
    ) -> (f64, Recorder, f64, f64, u64) {
        let topic = format!("realtime:fanout-{}-{}", t.name, now_us());
        let rec = Recorder::default();
        let _receivers = self.subscribers(t, receivers, &topic, json!({}), &jwt("anon", "r"), &rec).await;
        let mut sender = connect(&t.url(&jwt("anon", "s")), t.addr(), source()).await.unwrap();
        join(&mut sender, &topic, json!({"broadcast": {"self": false}}), None).await;
        let (mut sink, _stream) = sender.split();
        let pad = "x".repeat(payload);
        let (cpu0, server0, start) = (cpu_seconds(), process_cpu_seconds(t.pid), Instant::now());
        for _ in 0..messages {
            send(&mut sink, broadcast_frame(&topic, "b", &pad)).await;
        }
        let expected = (receivers * messages) as u64;
        rec.wait_for(expected, Duration::from_secs(60)).await;
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = (cpu_seconds() - cpu0) / elapsed * 100.0;
        let server = (process_cpu_seconds(t.pid) - server0) / elapsed * 100.0;
        (rec.count() as f64 / elapsed, rec, cpu, server, expected)
    }

    async fn scenario_fan_out(&mut self) {
        let (receivers, messages) = if self.quick { (200, 200) } else { (1000, 500) };
        let mut row = Vec::new();
        for t in [self.realtime.clone(), self.peer.clone()] {
            row.push(self.fan_out(&t, receivers, 1024, messages).await);
        }
        let (ours, peer) = (&row[0], &row[1]);
        let name = format!("1. fan-out, 1 sender → {receivers} receivers, 1 KB, {messages} msgs");
        self.report.add(
            Figure::rate(&name, "deliveries/s", ours.0, Some(peer.0), "≈224,000 msgs/s (multi-node cluster)", ours.2)
                .with_delivered(ours.1.count(), ours.4, Some((peer.1.count(), peer.4)))
                .with_server_cpu(ours.3, Some(peer.3)),
        );
        self.report.add(Figure::latency(&format!("{name}: latency"), &ours.1, Some(&peer.1), "6 / 28 / 213 ms"));
    }

    /// Scenario 2: every user in a 1-user echo channel and a 6-user channel,
    /// 2 messages/s per channel.
    async fn scenario_mix(&mut self) {
        let steps: &[usize] = if self.quick { &[120] } else { &[300, 600, 1200] };
        let seconds = if self.quick { 5 } else { 10 };
        let t = self.realtime.clone();
        for &users in steps {
            let run = now_us();
            let mut recorders = Vec::new();
            let mut sockets = Sockets::default();
            let mut topics = Vec::new();
            for u in 0..users {
                let rec = Recorder::default();
                let mut ws = connect(&t.url(&jwt("anon", "u")), t.addr(), source()).await.unwrap();
                let echo = format!("realtime:echo-{run}-{u}");
                let group = format!("realtime:group-{run}-{}", u / 6);
                join(&mut ws, &echo, json!({"broadcast": {"self": true}}), None).await;
                join(&mut ws, &group, json!({"broadcast": {"self": true}}), None).await;
                sockets.add(ws, &rec);
                topics.push((echo, group));
                recorders.push(rec);
            }
            let cpu0 = cpu_seconds();
            let server0 = process_cpu_seconds(t.pid);
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut ticks = 0u64;
            while start.elapsed() < Duration::from_secs(seconds) {
                tick.tick().await;
                for (sink, (echo, group)) in sockets.sinks.iter_mut().zip(&topics) {
                    send(sink, broadcast_frame(echo, "e", "")).await;
                    send(sink, broadcast_frame(group, "g", "")).await;
                }
                ticks += 1;
            }
            // Every user gets its own echo and every group member's message
            // (its own too) on each tick.
            let expected: Vec<u64> = (0..users).map(|u| ticks * (1 + (users - u / 6 * 6).min(6) as u64)).collect();
            let total: u64 = expected.iter().sum();
            let all_in = Instant::now() + Duration::from_secs(5);
            while recorders.iter().map(Recorder::count).sum::<u64>() < total && Instant::now() < all_in {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let cpu = (cpu_seconds() - cpu0) / start.elapsed().as_secs_f64() * 100.0;
            let server = (process_cpu_seconds(t.pid) - server0) / start.elapsed().as_secs_f64() * 100.0;
            let good = recorders.iter().zip(&expected).filter(|(r, e)| r.count() == **e && r.p95_ms() < 50.0).count();
            let all = Recorder::default();
            for r in &recorders {
                all.latency.lock().unwrap().add(&*r.latency.lock().unwrap()).unwrap();
            }
            let rate = recorders.iter().map(Recorder::count).sum::<u64>() as f64 / start.elapsed().as_secs_f64();
            self.report.add(
                Figure::text(
                    &format!("2. broadcast mix, {users} users (echo + 6-user channel, 2 msg/s each)"),
                    &format!(
                        "{good}/{users} users got every message with p95 < 50 ms; {rate:.0} msgs/s; p95 {:.1} ms",
                        all.p95_ms()
                    ),
                    "32,000 users, 224,000 msgs/s, p95 28 ms (2–6 nodes)",
                    cpu,
                )
                .with_server_cpu(server, None),
            );
        }
    }

    /// Drives inserts into `table` (whose trigger sends to `topic`) with
    /// pgbench at `rate` per second for `seconds`. Returns (rows inserted,
    /// pgbench's CPU seconds).
    fn pgbench(&self, table: &str, topic: &str, rate: usize, seconds: u64) -> (u64, f64) {
        self.pgbench_at(&self.pg_port, table, topic, rate, seconds)
    }

    fn pgbench_at(&self, port: &str, table: &str, topic: &str, rate: usize, seconds: u64) -> (u64, f64) {
        let script = std::env::temp_dir().join(format!("realtime-bench-{table}.sql"));
        std::fs::write(
            &script,
            format!(
                "INSERT INTO {table} (topic, t) VALUES ('{topic}', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);\n"
            ),
        )
        .expect("writing the pgbench script");
        let clients = rate.div_ceil(2500).clamp(1, 16).to_string();
        let cpu0 = children_cpu_seconds();
        let out = Command::new("pgbench")
            .args(["-n", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-c", &clients, "-j", "2"])
            .args(["-R", &rate.to_string(), "-T", &seconds.to_string(), "-f"])
            .arg(&script)
            .arg("postgres")
            .output()
            .expect("pgbench runs");
        assert!(out.status.success(), "pgbench failed: {}", String::from_utf8_lossy(&out.stderr));
        let rows =
            self.psql_at(port, &format!("SELECT count(*) FROM {table} WHERE topic = '{topic}'")).parse().unwrap_or(0);
        (rows, children_cpu_seconds() - cpu0)
    }

    /// Scenario 3: a trigger per insert (broadcast_changes; the peer's
    /// pg_notify), 100 subscribers per channel, a sweep of insert rates
    /// driven by pgbench, each rate on realtime and then on the peer.
    async fn scenario_database(&mut self) {
        self.psql(
            "CREATE TABLE IF NOT EXISTS bench_rows (id bigserial PRIMARY KEY, topic text, t bigint);
             CREATE OR REPLACE FUNCTION bench_rows_broadcast() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM realtime.broadcast_changes(NEW.topic, TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL); RETURN NULL; END $$;
             DROP TRIGGER IF EXISTS broadcast ON bench_rows;
             CREATE TRIGGER broadcast AFTER INSERT ON bench_rows FOR EACH ROW EXECUTE FUNCTION bench_rows_broadcast();
             CREATE TABLE IF NOT EXISTS bench_peer_rows (id bigserial PRIMARY KEY, topic text, t bigint);
             CREATE OR REPLACE FUNCTION bench_peer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('realtime', json_build_object('topic', NEW.topic, 'event', TG_OP,
                                     'payload', json_build_object('record', row_to_json(NEW)))::text); RETURN NULL; END $$;
             DROP TRIGGER IF EXISTS notify ON bench_peer_rows;
             CREATE TRIGGER notify AFTER INSERT ON bench_peer_rows FOR EACH ROW EXECUTE FUNCTION bench_peer_notify();",
        );
        // One commit per insert: with fsync on, this machine's disk caps
        // commits at 1,100–2,500/s whatever consumes them, so the sweep runs
        // with fsync off (a setting reloaded at run time) to measure the
        // servers, and one rate runs again with the default settings.
        let rates: &[usize] = if self.quick { &[100, 1000, 5000] } else { &[100, 1000, 5000, 10_000, 20_000, 30_000] };
        let seconds = if self.quick { 3 } else { 6 };
        self.psql("ALTER SYSTEM SET fsync = off");
        self.psql("SELECT pg_reload_conf()");
        let mut best = [0.0f64; 2];
        for &rate in rates {
            let runs = self.database_rate(rate, seconds).await;
            for (k, run) in runs.iter().enumerate() {
                if run.complete && run.latency.p95_ms() < 50.0 && run.achieved > best[k] {
                    best[k] = run.achieved;
                }
            }
            self.report
                .add(database_figure(&format!("3. database → 100 subscribers at {rate} inserts/s (fsync off)"), &runs));
        }
        self.psql("ALTER SYSTEM RESET fsync");
        self.psql("SELECT pg_reload_conf()");
        let runs = self.database_rate(1000, seconds).await;
        self.report.add(database_figure(
            "3. database → 100 subscribers at 1000 inserts/s (default settings: fsync on)",
            &runs,
        ));
        self.report.add(Figure::rate(
            "3. highest insert rate with every message delivered and p95 < 50 ms (fsync off)",
            "inserts/s",
            best[0],
            Some(best[1]),
            "10,000 msgs/s, p50 46 ms (80,000 users)",
            0.0,
        ));
    }

    /// One rate of scenario 3 on realtime, then on the peer.
    async fn database_rate(&self, rate: usize, seconds: u64) -> Vec<DatabaseRun> {
        let mut runs = Vec::new();
        for (t, table, config, key) in [
            (self.realtime.clone(), "bench_rows", json!({"private": true}), jwt("service_role", "db")),
            (self.peer.clone(), "bench_peer_rows", json!({}), jwt("anon", "db")),
        ] {
            let name = format!("db-{}-{rate}-{}", t.name, now_us());
            let rec = Recorder::default();
            let _subs = self.subscribers(&t, 100, &format!("realtime:{name}"), config, &key, &rec).await;
            let server_cpu0 = process_cpu_seconds(t.pid);
            let own_cpu0 = cpu_seconds();
            let start = Instant::now();
            let (rows, pgbench_cpu) = self.pgbench(table, &name, rate, seconds);
            let achieved = rows as f64 / start.elapsed().as_secs_f64();
            rec.wait_for(rows * 100, Duration::from_secs(20)).await;
            let elapsed = start.elapsed().as_secs_f64();
            let run = DatabaseRun {
                achieved,
                delivered: rec.count(),
                expected: rows * 100,
                complete: rec.count() >= rows * 100,
                server_cpu: (process_cpu_seconds(t.pid) - server_cpu0) / elapsed * 100.0,
                loadgen_cpu: (cpu_seconds() - own_cpu0 + pgbench_cpu) / elapsed * 100.0,
                latency: rec,
            };
            let (p50, p95, p99) = run.latency.percentiles();
            println!(
                "  {} at {rate}/s: {achieved:.0} inserts/s, delivered {}/{}, p50 {p50:.2} p95 {p95:.2} p99 {p99:.2} ms, server CPU {:.0}%",
                t.name, run.delivered, run.expected, run.server_cpu
            );
            runs.push(run);
        }
        runs
    }

    async fn scenario_payloads(&mut self) {
        let t = self.realtime.clone();
        for kb in [1usize, 10, 50] {
            let (rate, rec, cpu, server, expected) =
                self.fan_out(&t, 100, kb * 1024, if self.quick { 100 } else { 300 }).await;
            let (p50, p95, p99) = rec.percentiles();
            let published = match kb {
                1 => "p50 13 / p99 85 ms",
                10 => "p50 16 / p99 93 ms",
                _ => "p50 27 / p99 146 ms",
            };
            self.report.add(
                Figure::text(
                    &format!("4. payload {kb} KB, 1 sender → 100 receivers"),
                    &format!("{rate:.0} deliveries/s; {p50:.1} / {p95:.1} / {p99:.1} ms"),
                    published,
                    cpu,
                )
                .with_delivered(rec.count(), expected, None)
                .with_server_cpu(server, None),
            );
        }
    }

    /// Scenario 5: private joins authorized by an RLS policy.
    async fn scenario_private_joins(&mut self) {
        self.psql(
            "DROP POLICY IF EXISTS bench_read ON realtime.messages;
             CREATE POLICY bench_read ON realtime.messages FOR SELECT TO authenticated
               USING (realtime.topic() LIKE 'bench:%' AND (auth.jwt() ->> 'sub') IS NOT NULL);",
        );
        let (conns, per) = if self.quick { (20, 50) } else { (50, 100) };
        let t = self.realtime.clone();
        let start = Instant::now();
        let cpu0 = cpu_seconds();
        let mut tasks = Vec::new();
        for c in 0..conns {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                let key = jwt("authenticated", &format!("user-{c}"));
                let mut ws = connect(&t.url(&key), t.addr(), source()).await.unwrap();
                let mut ok = 0;
                for j in 0..per {
                    if join(&mut ws, &format!("realtime:bench:{c}:{j}"), json!({"private": true}), None).await == "ok" {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut ok = 0;
        for task in tasks {
            ok += task.await.unwrap_or(0);
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = (cpu_seconds() - cpu0) / elapsed * 100.0;
        assert_eq!(ok, conns * per, "every private join is allowed");
        self.report.add(Figure::rate(
            &format!("5. private-channel joins under an RLS policy ({conns} sockets × {per} joins)"),
            "joins/s",
            ok as f64 / elapsed,
            None,
            "1,000 joins/s (cluster)",
            cpu,
        ));
    }

    /// Scenario 6: Postgres Changes under an RLS policy, every subscriber
    /// with its own claims (one group each: the worst case for batching).
    async fn scenario_changes(&mut self) {
        let steps: Vec<usize> = match std::env::var("BENCH_CHANGES_SUBSCRIBERS") {
            Ok(list) => list.split(',').filter_map(|n| n.parse().ok()).collect(),
            Err(_) if self.quick => vec![500],
            Err(_) => vec![500, 1500, 3000],
        };
        let steps = &steps;
        let rows = if self.quick { 60 } else { 100 };
        for &subscribers in steps.iter() {
            let table = format!("bench_pc_{subscribers}_{}", now_us());
            self.psql(&format!(
                "CREATE TABLE {table} (id bigserial PRIMARY KEY, owner uuid, t bigint);
                 ALTER PUBLICATION supabase_realtime ADD TABLE {table};
                 GRANT SELECT ON {table} TO authenticated;
                 ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY readable ON {table} FOR SELECT TO authenticated USING (auth.role() = 'authenticated');"
            ));
            let t = self.realtime.clone();
            let rec = Recorder::default();
            let mut sockets = Sockets::default();
            for s in 0..subscribers {
                let key = jwt("authenticated", &format!("00000000-0000-4000-8000-{s:012}"));
                let mut ws = connect(&t.url(&key), t.addr(), source()).await.unwrap();
                let config = json!({"postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}]});
                assert_eq!(join(&mut ws, &format!("realtime:{table}"), config, None).await, "ok");
                sockets.add(ws, &rec);
            }
            tokio::time::sleep(Duration::from_millis(500)).await; // the "Subscribed to PostgreSQL" replies
            let start = Instant::now();
            let cpu0 = cpu_seconds();
            let server0 = process_cpu_seconds(t.pid);
            for chunk in 0..rows / 10 {
                let _ = chunk;
                self.psql(&format!(
                    "INSERT INTO {table} (owner, t) SELECT gen_random_uuid(), (extract(epoch FROM clock_timestamp()) * 1000000)::bigint FROM generate_series(1, 10)"
                ));
            }
            let expected = (rows * subscribers) as u64;
            rec.wait_for(expected, Duration::from_secs(120)).await;
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = (cpu_seconds() - cpu0) / elapsed * 100.0;
            let server = (process_cpu_seconds(t.pid) - server0) / elapsed * 100.0;
            let (_, p95, _) = rec.percentiles();
            let published = match subscribers {
                500 => "3,000 msgs/s (p95 228–618 ms)",
                1500 => "3,000 msgs/s (p95 356–387 ms)",
                _ => "3,000–4,000 msgs/s (p95 616–920 ms)",
            };
            self.report.add(
                Figure::text(
                    &format!(
                        "6. Postgres Changes with RLS, {subscribers} subscribers (distinct claims), {rows} inserts"
                    ),
                    &format!("{:.0} delivered msgs/s; p95 {p95:.0} ms", rec.count() as f64 / elapsed),
                    published,
                    cpu,
                )
                .with_delivered(rec.count(), expected, None)
                .with_server_cpu(server, None),
            );
            drop(sockets);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Scenario 8: one transaction of many `realtime.send` calls, and one
    /// UPDATE of as many rows of a table with a Postgres Changes subscriber:
    /// the time until the subscriber has every message, and the worker's
    /// peak resident memory over its idle level.
    async fn scenario_huge(&mut self) {
        let n: u64 = if self.quick { 100_000 } else { 1_000_000 };
        let t = self.realtime.clone();
        let limit_mb: f64 = self
            .psql("SELECT setting::bigint / 1024 FROM pg_settings WHERE name = 'realtime.max_memory'")
            .parse()
            .unwrap_or(0.0);
        let table = format!("bench_huge_{}", now_us());
        self.psql(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, t bigint);
             INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {n}) g;
             ALTER PUBLICATION supabase_realtime ADD TABLE {table};
             GRANT SELECT ON {table} TO anon;"
        ));
        let cases = [
            (
                format!("8. one transaction of {n} realtime.send calls → 1 subscriber"),
                json!({}),
                format!(
                    "SELECT count(realtime.send(jsonb_build_object('t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, 'n', g), 'e', '{table}', false)) FROM generate_series(1, {n}) g"
                ),
            ),
            (
                format!("8. one UPDATE of {n} rows → 1 Postgres Changes subscriber"),
                json!({"postgres_changes": [{"event": "UPDATE", "schema": "public", "table": table}]}),
                format!("UPDATE {table} SET t = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"),
            ),
        ];
        for (name, config, sql) in cases {
            let rec = Recorder::default();
            let subs = self.subscribers(&t, 1, &format!("realtime:{table}"), config, &jwt("anon", "huge"), &rec).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = rss_kb(t.pid);
            let peak = Arc::new(AtomicU64::new(before));
            let watching = Arc::new(AtomicBool::new(true));
            let watcher = {
                let (peak, watching, pid) = (peak.clone(), watching.clone(), t.pid);
                tokio::spawn(async move {
                    while watching.load(Ordering::Relaxed) {
                        peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            };
            let start = Instant::now();
            self.psql(&sql);
            let committed = start.elapsed().as_secs_f64();
            rec.wait_for(n, Duration::from_secs(if self.quick { 120 } else { 600 })).await;
            let delivered = start.elapsed().as_secs_f64() - committed;
            watching.store(false, Ordering::Relaxed);
            let _ = watcher.await;
            let grown = peak.load(Ordering::Relaxed).saturating_sub(before) as f64 / 1024.0;
            self.report.add(
                Figure::text(
                    &name,
                    &format!(
                        "committed in {committed:.1} s, delivered {delivered:.1} s later; worker RSS +{grown:.0} MB at peak \
                         (realtime.max_memory {limit_mb:.0} MB)"
                    ),
                    "—",
                    0.0,
                )
                .with_delivered(rec.count(), n, None),
            );
            drop(subs);
        }
        self.psql(&format!("DROP TABLE {table}"));
    }

    /// Scenario 9: the worker's CPU with nothing to do.
    async fn scenario_idle(&mut self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = self.realtime.pid;
        let (cpu0, start) = (process_cpu_seconds(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cpu = (process_cpu_seconds(pid) - cpu0) / start.elapsed().as_secs_f64() * 100.0;
        self.report.add(
            Figure::text("9. idle worker (no sockets, no writes) over 10 s", "—", "—", 0.0).with_server_cpu(cpu, None),
        );
    }

    /// Scenario 7: worker (or peer process) RSS growth per idle joined socket,
    /// measured first, on processes that have served nothing yet.
    async fn scenario_memory(&mut self) {
        // 50,000 is beyond this machine: a process may hold 20,000 descriptors
        // (the hard limit cannot be raised here), the server keeps some for
        // Postgres, and the load generator needs one per socket too.
        let steps: &[usize] = if self.quick { &[2000] } else { &[10_000, 18_000] };
        for (step, &n) in steps.iter().enumerate() {
            let mut row = Vec::new();
            for t in [self.realtime.clone(), self.peer.clone()] {
                let before = rss_kb(t.pid);
                let rec = Recorder::default();
                let topic = format!("realtime:idle-{}-{}", t.name, now_us());
                let sockets = self.subscribers(&t, n, &topic, json!({}), &jwt("anon", "idle"), &rec).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let after = rss_kb(t.pid);
                row.push((after.saturating_sub(before) as f64 * 1024.0 / n as f64, before, after));
                drop(sockets);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            self.report.add(Figure::bytes(
                &format!(
                    "7. memory per idle joined connection at {n} connections (RSS delta{})",
                    // Later steps reuse what the allocator kept from the step before.
                    if step == 0 { ", fresh process" } else { ", after the step before" }
                ),
                row[0].0,
                Some(row[1].0),
                "—",
            ));
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    raise_fd_limit();
    let target = |name, port: &str, pid: Option<String>| Target {
        name,
        port: arg(port).and_then(|p| p.parse().ok()).expect(port),
        pid: pid.and_then(|p| p.parse().ok()).unwrap_or(0),
    };
    let mut bench = Bench {
        quick,
        pg_port: arg("--pg-port").expect("--pg-port"),
        realtime: target("realtime", "--realtime-port", arg("--realtime-pid")),
        peer: target("peer", "--peer-port", arg("--peer-pid")),
        report: Report::default(),
    };
    if bench.realtime.pid == 0 {
        bench.realtime.pid =
            bench.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime'").parse().unwrap_or(0);
    }
    // `--only 3,7` runs those scenarios alone (for working on one figure).
    let only: Option<Vec<u32>> = arg("--only").map(|l| l.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let run = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    let started = Instant::now();
    if run(7) {
        println!("scenario 7: memory per connection (on fresh processes)");
        bench.scenario_memory().await;
    }
    if run(1) {
        println!("scenario 1: fan-out");
        bench.scenario_fan_out().await;
    }
    if run(2) {
        println!("scenario 2: broadcast mix");
        bench.scenario_mix().await;
    }
    if run(3) {
        println!("scenario 3: broadcast from the database");
        bench.scenario_database().await;
    }
    if run(4) {
        println!("scenario 4: payload sizes");
        bench.scenario_payloads().await;
    }
    if run(5) {
        println!("scenario 5: private joins");
        bench.scenario_private_joins().await;
    }
    if run(6) {
        println!("scenario 6: Postgres Changes with RLS");
        bench.scenario_changes().await;
    }
    if run(8) {
        println!("scenario 8: huge transactions");
        bench.scenario_huge().await;
    }
    if run(9) {
        println!("scenario 9: idle worker");
        bench.scenario_idle().await;
    }
    if run(10) {
        println!("scenario 10: a primary and two hot standbys (realtime.bus)");
        bench.scenario_nodes().await;
    }
    if only.is_some() {
        return bench.report.print();
    }
    let out = arg("--out").unwrap_or_else(|| ".".into());
    bench.report.finish(quick, started.elapsed(), &out);
}
