//! `make bench`: load on loopback against realtime and, in the same run, the
//! peer (a Node.js `ws` server fed by LISTEN/NOTIFY); prints a table and
//! writes BENCHMARKS.md and a latency plot. Every loop is bounded in count
//! and time.
//!
//! realtime-bench [--quick] --pg-port P --realtime-port R --peer-port Q --peer-pid N --out DIR

mod client;
mod report;

use client::{Recorder, Sink, broadcast_frame, connect, join, now_us, send, spawn_reader};
use futures_util::StreamExt;
use report::{Figure, Report};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
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
                &self.pg_port,
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

    /// Scenario 1 (and 4): one sender, `receivers` on one channel.
    async fn fan_out(&self, t: &Target, receivers: usize, payload: usize, messages: usize) -> (f64, Recorder, f64) {
        let topic = format!("realtime:fanout-{}-{}", t.name, now_us());
        let rec = Recorder::default();
        let _receivers = self.subscribers(t, receivers, &topic, json!({}), &jwt("anon", "r"), &rec).await;
        let mut sender = connect(&t.url(&jwt("anon", "s")), t.addr(), source()).await.unwrap();
        join(&mut sender, &topic, json!({"broadcast": {"self": false}}), None).await;
        let (mut sink, _stream) = sender.split();
        let pad = "x".repeat(payload);
        let (cpu0, start) = (cpu_seconds(), Instant::now());
        for _ in 0..messages {
            send(&mut sink, broadcast_frame(&topic, "b", &pad)).await;
        }
        let expected = (receivers * messages) as u64;
        rec.wait_for(expected, Duration::from_secs(60)).await;
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = (cpu_seconds() - cpu0) / elapsed * 100.0;
        (rec.count() as f64 / elapsed, rec, cpu)
    }

    async fn scenario_fan_out(&mut self) {
        let (receivers, messages) = if self.quick { (200, 200) } else { (1000, 500) };
        let mut row = Vec::new();
        for t in [self.realtime.clone(), self.peer.clone()] {
            row.push(self.fan_out(&t, receivers, 1024, messages).await);
        }
        let (ours, peer) = (&row[0], &row[1]);
        let name = format!("1. fan-out, 1 sender → {receivers} receivers, 1 KB, {messages} msgs");
        self.report.add(Figure::rate(
            &name,
            "deliveries/s",
            ours.0,
            Some(peer.0),
            "≈224,000 msgs/s (multi-node cluster)",
            ours.2,
        ));
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
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while start.elapsed() < Duration::from_secs(seconds) {
                tick.tick().await;
                for (sink, (echo, group)) in sockets.sinks.iter_mut().zip(&topics) {
                    send(sink, broadcast_frame(echo, "e", "")).await;
                    send(sink, broadcast_frame(group, "g", "")).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu = (cpu_seconds() - cpu0) / start.elapsed().as_secs_f64() * 100.0;
            let good = recorders.iter().filter(|r| r.count() > 0 && r.p95_ms() < 50.0).count();
            let all = Recorder::default();
            for r in &recorders {
                all.latency.lock().unwrap().add(&*r.latency.lock().unwrap()).unwrap();
            }
            let rate = recorders.iter().map(Recorder::count).sum::<u64>() as f64 / start.elapsed().as_secs_f64();
            self.report.add(Figure::text(
                &format!("2. broadcast mix, {users} users (echo + 6-user channel, 2 msg/s each)"),
                &format!("{good}/{users} users with p95 < 50 ms; {rate:.0} msgs/s; p95 {:.1} ms", all.p95_ms()),
                "32,000 users, 224,000 msgs/s, p95 28 ms (2–6 nodes)",
                cpu,
            ));
        }
    }

    /// Inserts into `table` for `seconds` at about `rate` rows/s across
    /// several sessions; returns the rows inserted.
    fn insert_load(&self, table: &str, topic: &str, rate: usize, seconds: u64) -> u64 {
        let sessions = rate.div_ceil(400).max(1);
        let per_session = rate as f64 / sessions as f64;
        let handles: Vec<_> = (0..sessions)
            .map(|_| {
                let sql = format!(
                    "DO $$ DECLARE deadline timestamptz := clock_timestamp() + interval '{seconds} seconds';
                     BEGIN WHILE clock_timestamp() < deadline LOOP
                       FOR j IN 1..10 LOOP
                         INSERT INTO {table} (topic, t) VALUES ('{topic}', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
                         COMMIT;
                       END LOOP;
                       PERFORM pg_sleep({:.6});
                     END LOOP; END $$",
                    10.0 / per_session
                );
                let port = self.pg_port.clone();
                std::thread::spawn(move || {
                    Command::new("psql")
                        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "postgres", "-c", &sql])
                        .status()
                })
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        self.psql(&format!("SELECT count(*) FROM {table} WHERE topic = '{topic}'")).parse().unwrap_or(0)
    }

    /// Scenario 3: a trigger per insert (broadcast_changes; the peer's
    /// pg_notify), 100 subscribers per channel, stepping the insert rate.
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
        let rates: &[usize] = if self.quick { &[200, 1000] } else { &[250, 1000, 2500, 5000] };
        let seconds = if self.quick { 3 } else { 8 };
        let mut best = [0.0f64; 2];
        let mut at_top: [Option<Recorder>; 2] = [None, None];
        for &rate in rates {
            for (k, (t, table, config, key)) in [
                (self.realtime.clone(), "bench_rows", json!({"private": true}), jwt("service_role", "db")),
                (self.peer.clone(), "bench_peer_rows", json!({}), jwt("anon", "db")),
            ]
            .into_iter()
            .enumerate()
            {
                let name = format!("db-{}-{rate}-{}", t.name, now_us());
                let rec = Recorder::default();
                let _subs = self.subscribers(&t, 100, &format!("realtime:{name}"), config, &key, &rec).await;
                let start = Instant::now();
                let rows = self.insert_load(table, &name, rate, seconds);
                let achieved = rows as f64 / start.elapsed().as_secs_f64();
                rec.wait_for(rows * 100, Duration::from_secs(10)).await;
                let complete = rec.count() >= rows * 100;
                let (p50, p95, p99) = rec.percentiles();
                println!(
                    "  {} at {rate}/s: {achieved:.0} inserts/s, delivered {}/{}, p50 {p50:.1} p95 {p95:.1} p99 {p99:.1} ms",
                    t.name,
                    rec.count(),
                    rows * 100
                );
                if complete && p95 < 50.0 && achieved > best[k] {
                    best[k] = achieved;
                    at_top[k] = Some(rec);
                }
            }
        }
        let seconds_note = if self.quick { "quick" } else { "full" };
        self.report.add(Figure::rate(
            &format!("3. broadcast from the database, 100 subscribers, highest insert rate with every message delivered and p95 < 50 ms ({seconds_note})"),
            "inserts/s",
            best[0],
            Some(best[1]),
            "10,000 msgs/s, p50 46 ms (80,000 users)",
            0.0,
        ));
        if let Some(ours) = &at_top[0] {
            self.report.add(Figure::latency(
                "3. commit → client latency at that rate",
                ours,
                at_top[1].as_ref(),
                "46 / 132 / 159 ms",
            ));
        }
    }

    async fn scenario_payloads(&mut self) {
        let t = self.realtime.clone();
        for kb in [1usize, 10, 50] {
            let (rate, rec, cpu) = self.fan_out(&t, 100, kb * 1024, if self.quick { 100 } else { 300 }).await;
            let (p50, p95, p99) = rec.percentiles();
            let published = match kb {
                1 => "p50 13 / p99 85 ms",
                10 => "p50 16 / p99 93 ms",
                _ => "p50 27 / p99 146 ms",
            };
            self.report.add(Figure::text(
                &format!("4. payload {kb} KB, 1 sender → 100 receivers"),
                &format!("{rate:.0} deliveries/s; {p50:.1} / {p95:.1} / {p99:.1} ms"),
                published,
                cpu,
            ));
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
        let steps: &[usize] = if self.quick { &[500] } else { &[500, 1500, 3000] };
        let rows = if self.quick { 60 } else { 100 };
        for &subscribers in steps {
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
            let (_, p95, _) = rec.percentiles();
            let published = match subscribers {
                500 => "3,000 msgs/s (p95 228–618 ms)",
                1500 => "3,000 msgs/s (p95 356–387 ms)",
                _ => "3,000–4,000 msgs/s (p95 616–920 ms)",
            };
            self.report.add(Figure::text(
                &format!("6. Postgres Changes with RLS, {subscribers} subscribers (distinct claims), {rows} inserts"),
                &format!(
                    "{:.0} delivered msgs/s ({}/{expected}); p95 {p95:.0} ms",
                    rec.count() as f64 / elapsed,
                    rec.count()
                ),
                published,
                cpu,
            ));
            drop(sockets);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Scenario 7: worker (or peer process) RSS growth per idle joined socket.
    async fn scenario_memory(&mut self) {
        // 50,000 is beyond this machine: a process may hold 20,000 descriptors
        // (the hard limit cannot be raised here), the server keeps some for
        // Postgres, and the load generator needs one per socket too.
        let steps: &[usize] = if self.quick { &[2000] } else { &[10_000, 18_000] };
        for &n in steps {
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
                &format!("7. memory per idle joined connection at {n} connections (RSS delta)"),
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
    let started = Instant::now();
    println!("scenario 1: fan-out");
    bench.scenario_fan_out().await;
    println!("scenario 2: broadcast mix");
    bench.scenario_mix().await;
    println!("scenario 3: broadcast from the database");
    bench.scenario_database().await;
    println!("scenario 4: payload sizes");
    bench.scenario_payloads().await;
    println!("scenario 5: private joins");
    bench.scenario_private_joins().await;
    println!("scenario 6: Postgres Changes with RLS");
    bench.scenario_changes().await;
    println!("scenario 7: memory per connection");
    bench.scenario_memory().await;
    let out = arg("--out").unwrap_or_else(|| ".".into());
    bench.report.finish(quick, started.elapsed(), &out);
}
